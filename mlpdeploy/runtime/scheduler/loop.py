"""The in-flight scheduler: one decode step for every active sequence at once.

    scheduler = Scheduler(engine, SchedulerOptions(max_batch=8))
    request = scheduler.submit(prompt_ids, max_tokens=48, sampling=Sampling(), stop_tokens=[2])
    for token in request.stream(): ...              # or request.wait() -> (tokens, finish)
    request.cancel()                                 # frees its row at the next step

One thread runs the loop. Each iteration it admits waiting requests (FIFO) while a row is free
and the cache budget holds their prompt + max_tokens, runs one prefill chunk of the request at
the head of the prefill line (`prefill.py`) — or, once it is prefilled, a piece of its cache's
copy into its row (`joining.py`) — and one decode step for every active row: each row
feeds its own next token at its own position and length (`Slots`, the step function's row-lengths
layout), so every row computes bit for bit what it computes alone — every greedy answer is its
solo answer (a prompt prefilled in chunks can differ where a near-tie flips: `near_ties`). A
sequence that ends (a stop token, max_tokens) or is cancelled leaves at once and frees its row
and its budget. Each request samples with its own settings and seed, as the solo loop does.

Builds that take ragged steps (`--ort-kernels`' CachedAttention with its `token_rows` input) run
fused prefill instead (`SchedulerOptions.prefill`): every admitted prompt goes into a row of its
own (`rows.Rows`) a chunk at a time inside the decode step of every other row, the step's prompt
tokens shared out in arrival order — one session run an iteration, no prefill step between decode
steps and no copy into the row (`prefill.RowPrefill`).

With a drafter (speculative decoding), a round of drafts is verified whenever one sequence is the
whole batch and none waits; under load every step is a plain decode step (docs/serving.md: a
verify step of k drafts for b rows costs b·(k+1) tokens, more than batching saves).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.sampling import Sampling
from mlpdeploy.runtime.scheduler.joining import Joining
from mlpdeploy.runtime.scheduler.options import SchedulerOptions
from mlpdeploy.runtime.scheduler.prefill import ChunkPolicy, Prefill, RowPrefill
from mlpdeploy.runtime.scheduler.prefix import PrefixCache
from mlpdeploy.runtime.scheduler.request import QueueFull, Request
from mlpdeploy.runtime.scheduler.rows import KeptCopy, Rows
from mlpdeploy.runtime.scheduler.slots import Slots
from mlpdeploy.runtime.step import Stepper
from mlpdeploy.runtime.ties import DEFAULT_MARGIN

log = logging.getLogger("mlpdeploy.scheduler")


class Scheduler:
    """Continuous batching over an `Engine` whose build keeps per-row cache lengths (module docstring).
    `observers`: objects with `step(rows, seconds)` and `finished(request)`, called on the loop's thread."""

    def __init__(self, engine: Engine, options: SchedulerOptions | None = None, drafter=None, tie_margin: float = DEFAULT_MARGIN):
        self.stepper = Stepper(engine)
        if not self.stepper.row_lengths:
            raise MlpdeployError(f"{engine.path.name} was built without per-row cache lengths, which in-flight batching needs; "
                                 "rebuild it with this mlpdeploy (onnxruntime backend, ort fusions on)")
        self.engine, self.options, self.tie_margin = engine, options or SchedulerOptions(), tie_margin
        context = self.stepper.layout.max_positions
        self.budget = self.options.budget(context)
        self.columns = min(context, self.budget)  # one row holds a whole budget's sequence at most
        self.fused = self.options.fused(self.stepper.ragged, engine.path.name)
        self.slots = (Rows if self.fused else Slots)(self.stepper, self.options.max_batch, self.columns)
        self.chunks = ChunkPolicy(self.options.prefill_stall, self.options.prefill_chunk, self.options.smallest_chunk)
        self.prefixes = PrefixCache(self.options.prefix_cache_mb << 20)
        self.drafting = None
        if drafter is not None:
            from mlpdeploy.runtime.scheduler.drafting import SoloDrafting

            self.drafting = SoloDrafting(self.stepper, drafter, self.columns)
        self.observers: list = []
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._admitted: deque[Request] = deque()  # admitted, waiting for their prefill
        self._prefill: Prefill | None = None
        self._filling: list[RowPrefill] = []  # fused prefill: the prompts going into their rows
        self._keeping: list[KeptCopy] = []  # fused prefill: prompts copied out of their rows for the prefix cache
        self._joining: Joining | None = None  # prefilled, its cache going into a row
        self._reserved = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="mlpdeploy-scheduler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the callers' side
    def check(self, prompt: Sequence[int], max_tokens: int) -> None:
        """A one-line error if the request could never run (the model's context, the cache budget)."""
        if len(prompt) == 0:
            raise MlpdeployError("every prompt needs at least one token")
        if max_tokens < 1:
            raise MlpdeployError(f"max_new_tokens must be at least 1, got {max_tokens}")
        context = self.stepper.layout.max_positions
        if len(prompt) + max_tokens > context:
            raise MlpdeployError(f"a prompt of {len(prompt)} tokens plus {max_tokens} new ones exceeds the model's {context} positions; "
                                 "shorten the prompt or ask for fewer tokens")
        if len(prompt) + max_tokens > self.columns:
            raise MlpdeployError(f"a prompt of {len(prompt)} tokens plus {max_tokens} new ones exceeds the cache budget of {self.budget} "
                                 "tokens; ask for fewer tokens or raise the budget (--max-cache-tokens)")

    def submit(self, prompt: Sequence[int], max_tokens: int, sampling: Sampling | None = None, stop_tokens: Sequence[int] = (),
               on_event: Callable[[str, object], None] | None = None) -> Request:
        """Queue a request; it joins the batch at the next step with a free row and budget. Raises
        `QueueFull` when `max_queue_size` requests wait already, MlpdeployError when it can never run."""
        self.check(prompt, max_tokens)
        request = Request(prompt, max_tokens, sampling, stop_tokens, on_event, self.tie_margin)
        request._wake = self._wake
        with self._cond:
            if self._closed:
                raise MlpdeployError("the scheduler is closed")
            if self.options.max_queue_size and len(self._waiting) >= self.options.max_queue_size:
                raise QueueFull()
            self._waiting.append(request)
            self._cond.notify()
        return request

    def generate(self, prompt: Sequence[int], max_tokens: int, sampling: Sampling | None = None,
                 stop_tokens: Sequence[int] = ()) -> tuple[list[int], str]:
        """Submit and wait: (new tokens, finish reason)."""
        return self.submit(prompt, max_tokens, sampling, stop_tokens).wait()

    def stats(self) -> dict:
        """Where requests are now: active rows, prefilling, joining their row, admitted, waiting, cache tokens reserved."""
        with self._cond:
            return {"active": self.slots.active, "prefilling": int(self._prefill is not None) + len(self._filling),
                    "joining": int(self._joining is not None),
                    "admitted": len(self._admitted), "waiting": len(self._waiting), "reserved_tokens": self._reserved}

    def close(self) -> None:
        """Stop the loop; requests not finished end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=60)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not (self._waiting or self._admitted or self._prefill or self._filling or self._joining
                                                or self.slots.active):
                    self._cond.wait()
                if self._closed:
                    break
                self._fill_delay()
                self._admit()
            try:
                self._iteration()
            except Exception as exc:  # noqa: BLE001 - a failed step ends the requests in flight; the loop goes on
                self._fail(f"{type(exc).__name__}: {exc}", traceback.format_exc())
        self._fail("the scheduler closed")

    def _fill_delay(self) -> None:
        """Idle (nothing running) with requests waiting: give the batch up to max_queue_delay_us to fill."""
        delay = self.options.max_queue_delay_us / 1e6
        if not delay or self.slots.active or self._prefill or self._filling or self._joining or self._admitted or not self._waiting:
            return
        deadline = self._waiting[0].arrived + delay
        while not self._closed and len(self._waiting) < self.options.max_batch and (left := deadline - time.perf_counter()) > 0:
            self._cond.wait(left)

    def _admit(self) -> None:
        """Waiting → admitted, in arrival order, while rows and the cache budget allow (under the lock)."""
        while self._waiting:
            request = self._waiting[0]
            if request.cancelled:
                self._waiting.popleft()
                request.end("cancelled")
                self._notify(request)
                continue
            rows = self.slots.active + len(self._admitted) + len(self._filling) + (self._prefill is not None) + (self._joining is not None)
            if rows >= self.options.max_batch or self._reserved + request.reserved > self.budget:
                return
            self._waiting.popleft()
            self._reserved += request.reserved
            request.admitted = time.perf_counter()
            self._admitted.append(request)

    def _iteration(self) -> None:
        for request in [r for r in self.slots.requests if r is not None and r.cancelled]:
            self._leave(request, "cancelled")
        if self.fused:
            self._fused_step()
            return
        self._prefill_chunk()
        self.slots.advance_move(self.options.copy_step_bytes)
        if self.slots.active:
            if self.drafting is not None and self.slots.active == 1 and not (self._prefill or self._joining or self._admitted or self._waiting):
                self._speculative_round()
            else:
                self._decode_step()

    def _prefill_chunk(self) -> None:
        """One chunk of the head prefill (started from the admitted line when none runs), or while a
        prefilled prompt joins its row, the next piece of that (`joining.py`)."""
        if self._joining is not None:
            self._join_piece()
            return
        if self._prefill is None:
            while self._admitted and self._admitted[0].cancelled:
                self._release(self._admitted.popleft(), "cancelled")
            if not self._admitted:
                return
            with self._cond:
                request = self._admitted.popleft()
            self._prefill = Prefill(self.stepper, request, self.prefixes.match(request.prompt))
            request.reused_tokens = self._prefill.reused
        job = self._prefill
        if job.request.cancelled:
            self._prefill = None
            self._release(job.request, "cancelled")
            return
        tokens = self.chunks.size(job.remaining, self.slots.active, job.last)
        seconds = job.run(tokens)
        if self.slots.active:
            self.chunks.observe_chunk(tokens, seconds)
        if job.remaining:
            return
        self._prefill = None
        request = job.request
        self.prefixes.keep(request.prompt, job.buffers)  # the row gets a copy (Slots.join): these stay as they are
        token = request.pick(job.logits)
        if request.emit(token):
            self._release(request)
            return
        self._joining = Joining(request, job.buffers, len(request.prompt), token)
        # whole, at once, when it is one piece (cancelled or not, it joins, as a row's request does, and the
        # next iteration's sweep lets it go); else its first piece goes next iteration, not on top of this chunk
        if self._joining.whole(self.slots, self.options.copy_step_bytes) and self._joining.advance(self.slots, self.options.copy_step_bytes):
            self._joining = None

    def _join_piece(self) -> None:
        joining = self._joining
        if joining.request.cancelled:
            self._joining = None
            self._release(joining.request, "cancelled")
        elif joining.advance(self.slots, self.options.copy_step_bytes):
            self._joining = None

    def _fused_step(self) -> None:
        """One ragged step: chunks of the prompts prefilling (FIFO, `ChunkPolicy.fused_size` tokens in all) and
        every decoding row's token."""
        self._keep_piece()
        jobs = self._row_prefills()
        rows = self.slots.active
        if not jobs and not rows:
            return
        if not jobs and self.drafting is not None and rows == 1 and not self._waiting:
            self._speculative_round()
            return
        plan = self._plan(jobs, rows)
        plan.sort(key=lambda item: item[0].remaining == item[1])  # the chunks that end their prompt last (Rows.step)
        finishing = [job for job, tokens in plan if job.remaining == tokens]
        chunks = [job.chunk(tokens) for job, tokens in plan]
        decoding = list(self.slots.requests)
        start = time.perf_counter()
        firsts, logits = self.slots.step(chunks, len(finishing))
        seconds = time.perf_counter() - start
        if rows:
            if chunks:
                self.chunks.observe_fused(rows, sum(len(tokens) for _, tokens in chunks), seconds)
            else:
                self.chunks.observe_step(rows, seconds)
            for observer in self.observers:
                observer.step(rows, seconds)
        self._decoded(decoding, logits)
        for job, first in zip(finishing, firsts):
            self._row_prefilled(job, first)

    def _plan(self, jobs: list[RowPrefill], rows: int) -> list[tuple[RowPrefill, int]]:
        """(job, tokens) for this step: the step's prompt tokens (`fused_size`) shared out in arrival order; a
        prompt left with fewer than `smallest_chunk` tokens takes them now."""
        left = self.chunks.fused_size(sum(job.remaining for job in jobs), rows)
        plan = []
        for job in jobs:
            if left <= 0:
                break
            tokens = min(job.remaining, left)
            if job.remaining - tokens < self.options.smallest_chunk:
                tokens = job.remaining
            plan.append((job, tokens))
            left -= tokens
        return plan

    def _row_prefills(self) -> list[RowPrefill]:
        """The prompts prefilling into their rows: every admitted one starts (its row taken, a kept prefix
        copied in); the cancelled ones end."""
        for job in [job for job in self._filling if job.request.cancelled]:
            self._filling.remove(job)
            self.slots.release(job.row)
            self._release(job.request, "cancelled")
        while self._admitted:
            with self._cond:
                request = self._admitted.popleft()
            if request.cancelled:
                self._release(request, "cancelled")
                continue
            row = self.slots.take()
            reused, kept = self.prefixes.match(request.prompt)
            if reused:
                self.slots.copy_in(row, kept, reused)
            self._filling.append(RowPrefill(request, row, reused))
            request.reused_tokens = reused
        return self._filling

    def _row_prefilled(self, job: RowPrefill, logits: np.ndarray) -> None:
        """The prompt is in its row: emit its first token and let it decode from the next step; its columns go
        to the prefix cache, at once when they fit a `copy_step_bytes` piece, else a piece a step."""
        self._filling.remove(job)
        request = job.request
        copy = None
        if self.prefixes.takes(len(request.prompt), len(request.prompt) * self.slots.column_bytes):
            copy = KeptCopy(self.slots, request, job.row)
            if copy.advance(self.slots, self.options.copy_step_bytes):  # it fits one piece: kept at once
                self.prefixes.keep(request.prompt, copy.buffers)
                copy = None
        token = request.pick(logits)
        if request.emit(token):  # done at its first token: its row goes back now, a copy under way with it
            self.slots.release(job.row)
            self._release(request)
            return
        self.slots.join(request, job.row, token)
        if copy is not None:
            self._keeping.append(copy)

    def _keep_piece(self) -> None:
        """The next piece of the oldest prompt copy for the prefix cache (`rows.KeptCopy`)."""
        if self._keeping and self._keeping[0].advance(self.slots, self.options.copy_step_bytes):
            copy = self._keeping.pop(0)
            self.prefixes.keep(copy.request.prompt, copy.buffers)

    def _decoded(self, requests: list[Request | None], logits: np.ndarray) -> None:
        """Each row's next token from its logits (rows in `requests` order; None: a hole); the finished leave."""
        finished = []
        for row, request in enumerate(requests):
            if request is None:  # a hole: its dummy token's logits are not used
                continue
            token = request.pick(logits[row])
            self.slots.pending[row] = token
            if request.emit(token):
                finished.append(request)
        if self.drafting is not None:
            self.drafting.reset()  # a plain step: the drafts' state no longer follows the row
        for request in reversed(finished):
            self._leave(request)

    def _decode_step(self) -> None:
        state = self.slots.state()
        rows = self.slots.active
        start = time.perf_counter()
        logits = self.stepper.step(state, np.array(self.slots.pending, np.int64)[:, None])[:, -1]
        seconds = time.perf_counter() - start
        self.chunks.observe_step(rows, seconds)
        for observer in self.observers:
            observer.step(self.slots.live, seconds)
        self._decoded(self.slots.requests, logits)

    def _speculative_round(self) -> None:
        start = time.perf_counter()
        done = self.drafting.round(self.slots)
        if self.fused:
            self.slots.sync()
        for observer in self.observers:
            observer.step(1, time.perf_counter() - start)
        if done:
            self._leave(self.slots.requests[0])

    def _leave(self, request: Request, finish: str | None = None) -> None:
        self._keeping = [copy for copy in self._keeping if copy.request is not request]  # its row is not its prompt's any more
        self.slots.leave(request, self.options.copy_step_bytes)
        if self.drafting is not None:
            self.drafting.reset()
        self._release(request, finish)

    def _release(self, request: Request, finish: str | None = None) -> None:
        """End an admitted request and give back its share of the budget. Under the lock (reentrant),
        so that `stats()` elsewhere shows the budget back only once the observers have seen the
        request end, while an observer's own `stats()` shows it back already."""
        with self._cond:
            self._reserved -= request.reserved
            request.end(finish)
            self._notify(request)

    def _notify(self, request: Request) -> None:
        for observer in self.observers:
            observer.finished(request)

    def _fail(self, message: str, details: str | None = None) -> None:
        """End every request in flight (and, when closing, waiting) with `message`."""
        if details:
            log.error("a scheduler step failed; the requests in flight end with the error:\n%s", details)
        with self._cond:
            failed = self.slots.clear() + list(self._admitted)
            self._admitted.clear()
            if self._prefill is not None:
                failed.append(self._prefill.request)
                self._prefill = None
            failed += [job.request for job in self._filling]
            self._filling.clear()
            self._keeping.clear()
            if self._joining is not None:
                failed.append(self._joining.request)
                self._joining = None
            if self._closed:
                failed += list(self._waiting)
                self._waiting.clear()
            self._reserved -= sum(r.reserved for r in failed if r.admitted is not None)
        if self.drafting is not None:
            self.drafting.reset()
        for request in failed:
            request.end(error=message)
            self._notify(request)
