"""Prefill: a joining request's prompt run into its cache row, whole or in chunks.

A prompt is prefilled by its own steps on a one-row state with buffers of the prompt's length,
never inside the batch's decode step (a step runs [rows, width] tokens, so a chunk fed beside
one-token rows would cost every row the chunk's width); once done its cache is copied into the
batch's next free row (`Slots.join`). While no other sequence decodes, the prompt runs in one
step — exactly the solo prefill. While others decode, the scheduler alternates their decode step
with one chunk, sized so that the chunk takes about `prefill_stall` of their decode steps
(`ChunkPolicy`): the others' next token is delayed by that much, not by the whole prompt.

Builds that take ragged steps (CachedAttention's `token_rows`) prefill differently: the prompt goes
straight into its own batch row (`RowPrefill`, `rows.Rows`), each chunk inside the others' decode
step, sized so that it adds about `prefill_stall` of a decode step to that step
(`ChunkPolicy.fused_size`) — the same delay to the others, without a step of its own, a second
read of every weight or a copy into the row.
"""

from __future__ import annotations

import time

import numpy as np

from mlpdeploy.runtime.scheduler.request import Request
from mlpdeploy.runtime.step import Stepper, StepState

DECAY = 0.8  # weight of the past in the running estimates
FINISH = 1.5  # a prompt whose rest fits this many times a chunk's stall goes in one chunk


class Prefill:
    """One request's prompt going into a cache of its own (`buffers`); with `prefix` (tokens, one-row
    buffers holding at least them: `PrefixCache.match`) its first tokens are copied, not run."""

    def __init__(self, stepper: Stepper, request: Request, prefix: tuple[int, dict[str, np.ndarray] | None] = (0, None)):
        self.stepper, self.request = stepper, request
        self.buffers = stepper.cache_buffers(1, len(request.prompt))
        reused, kept = prefix
        if reused:
            for name, buffer in self.buffers.items():
                buffer[:, :, :reused] = kept[name][:, :, :reused]
        self.state: StepState = stepper.rows_state(self.buffers, [reused])
        self.done = self.reused = reused  # prompt tokens in the cache so far; of them, copied from a kept prefix
        self.logits: np.ndarray | None = None  # the last prompt token's logits, once done
        self.last: tuple[int, float] | None = None  # (tokens, seconds) of its latest chunk

    @property
    def remaining(self) -> int:
        return len(self.request.prompt) - self.done

    def run(self, tokens: int) -> float:
        """Prefill the next `tokens` prompt tokens; seconds taken."""
        start = time.perf_counter()
        chunk = np.array([self.request.prompt[self.done:self.done + tokens]], np.int64)
        logits = self.stepper.step(self.state, chunk, last_only=True)
        self.done += chunk.shape[1]
        if self.remaining == 0:
            self.logits = logits[0, -1]
        seconds = time.perf_counter() - start
        self.last = (chunk.shape[1], seconds)
        return seconds


class RowPrefill:
    """One request's prompt going into batch row `row` in chunks that ride in decode steps (module docstring);
    its first `done` tokens are in the row already (copied from a kept prefix)."""

    def __init__(self, request: Request, row: int, done: int = 0):
        self.request, self.row, self.done = request, row, done

    @property
    def remaining(self) -> int:
        return len(self.request.prompt) - self.done

    def chunk(self, tokens: int) -> tuple[int, list[int]]:
        """The next `tokens` prompt tokens as a (row, tokens) segment of a ragged step, counted as done."""
        start, self.done = self.done, self.done + tokens
        return self.row, self.request.prompt[start:self.done]


class ChunkPolicy:
    """How many prompt tokens one prefill step takes while `rows` other sequences decode.

    Estimates, updated after every step: a decode step's time per batch size, and a chunk's time
    as `base + per_token · (tokens − 1)` (base: what one token costs, about a one-row decode step;
    per_token: what each further token adds). A chunk gets the tokens whose estimated time is
    `stall` decode steps of the current batch, but at least `smallest`: a chunk pays one read of
    every weight, so small chunks cost more per token (SmolLM2-135M int4, 2 threads: 4 tokens cost
    1.9 one-token steps, 16 tokens 4.0, 64 tokens ~14) — and a prompt prefilled in one-token steps
    would take the decode kernels, whose last bits differ. A remainder smaller than `smallest` goes
    with the chunk before it, and a prompt whose rest is estimated to take at most `FINISH` × `stall`
    steps goes in one chunk: a chat prompt joining a busy batch pays one read of the weights, not
    two, while a long prompt's chunks keep to `stall`. With nothing decoding, the whole prompt in
    one step."""

    def __init__(self, stall: float, fixed: int | None = None, smallest: int = 4):
        self.stall, self.fixed, self.smallest = stall, fixed, smallest
        self.step_seconds: dict[int, float] = {}
        self.base: float | None = None
        self.per_token: float | None = None
        self.fused_per_token: float | None = None  # what a prompt token adds to a decode step it rides in

    def size(self, remaining: int, rows: int, last: tuple[int, float] | None = None) -> int:
        """Tokens for the next chunk of a prompt with `remaining` tokens left; `last`: (tokens, seconds)
        of this prompt's previous chunk: its per-token cost, where higher than the running estimate,
        is used (a chunk's attention grows with the prompt tokens before it)."""
        def fit(step: float) -> tuple[int, int] | None:
            if self.base is None:
                return None
            per_token = self.per_token if self.per_token is not None else self.base / 4
            if last is not None and last[0] > 1:
                per_token = max(per_token, max(last[1] - self.base, 0.0) / (last[0] - 1))  # the larger: chunks err small
            per_token = max(per_token, self.base / 32)  # a noisy chunk timed at or under `base` must not make tokens look free

            def fitting(seconds: float) -> int:  # the tokens of a chunk estimated to take `seconds`
                return 1 + int(max(0.0, seconds - self.base) / per_token)

            # the prompt's last chunk may take FINISH stalls: a little longer rather than one more read of every weight
            return fitting(self.stall * step), fitting(FINISH * self.stall * step)

        return self._sized(remaining, rows, fit)

    def fused_size(self, remaining: int, rows: int) -> int:
        """Prompt tokens for a decode step of `rows` rows to carry (module docstring; `remaining`: the prompts'
        tokens left): those estimated to add `stall` × that step's time, `smallest` at least; all of them
        when they fit `FINISH` times that (one step sooner), as the separate policy's last chunk; a
        remainder under `smallest` goes too. With nothing decoding, every one (each prompt's solo prefill)."""
        def fit(step: float) -> tuple[int, int] | None:
            if self.fused_per_token is None:
                return None
            tokens = int(self.stall * step / self.fused_per_token)
            return tokens, int(FINISH * tokens)

        return self._sized(remaining, rows, fit)

    def _sized(self, remaining: int, rows: int, fit) -> int:
        """The chunk rules both policies share; `fit(step seconds)`: (tokens for the stall, tokens for the
        finish allowance) from the estimates, or None before there are any."""
        if self.fixed is not None:
            return min(self.fixed, remaining)
        if rows == 0:
            return remaining
        tokens = self.smallest
        step = self._step(rows)
        fitted = fit(step) if step is not None else None
        if fitted is not None:
            tokens = max(tokens, fitted[0])
            if remaining <= fitted[1]:
                return remaining
        return remaining if remaining - tokens < self.smallest else tokens

    def observe_fused(self, rows: int, tokens: int, seconds: float) -> None:
        """A decode step of `rows` rows that carried `tokens` prompt tokens took `seconds`."""
        step = self._step(rows)
        if step is None:
            return
        floor = step / 32  # a noisy step timed at or under a plain one must not make tokens look free
        self.fused_per_token = _blend(self.fused_per_token, max((seconds - step) / tokens, floor))

    def observe_step(self, rows: int, seconds: float) -> None:
        self.step_seconds[rows] = _blend(self.step_seconds.get(rows), seconds)
        if rows == 1:
            self.base = self.step_seconds[1]
        elif 1 not in self.step_seconds:
            self.base = min(self.step_seconds.values())  # an over-estimate until a one-row step is seen: chunks err small

    def observe_chunk(self, tokens: int, seconds: float) -> None:
        if tokens > 1 and self.base is not None:
            self.per_token = _blend(self.per_token, max(seconds - self.base, 0.0) / (tokens - 1))

    def _step(self, rows: int) -> float | None:
        """A decode step's time at `rows` rows: measured, else the largest batch measured below it
        (an under-estimate: chunks err small), else the smallest above."""
        if rows in self.step_seconds:
            return self.step_seconds[rows]
        below = [r for r in self.step_seconds if r < rows]
        if below:
            return self.step_seconds[max(below)]
        return self.step_seconds[min(self.step_seconds)] if self.step_seconds else None


def _blend(old: float | None, new: float) -> float:
    return new if old is None else DECAY * old + (1 - DECAY) * new
