"""Token generation with a KV cache: prefill once, then one token per step (or, with a drafter,
several per verify step: `runtime.speculative`), the cache carried over.

Works on any artifact exported with `--kv-cache` (its manifest says which layers keep a cache).
Prompts of different lengths are left-padded. Both loops drive the same step function
(`runtime.step.Stepper`); greedy output does not depend on which loop ran it, except where a
near-tie flipped (`runtime.ties`: both loops record them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generation import Generation
from mlpdeploy.runtime.sampling import Sampling
from mlpdeploy.runtime.step import Stepper, StepState
from mlpdeploy.runtime.ties import TieRecorder, default_margin

DecodeState = StepState  # the name callers used before the step function had its own module

__all__ = ["CachedGenerator", "DecodeState", "Generation", "Sampling"]


class CachedGenerator:
    """Generates with an `Engine` whose artifact carries a KV cache; with `drafter` (a
    `runtime.speculative.Drafter`, or a mode string such as "ngram:k=8") by speculative decoding.
    `tie_margin`: greedy tokens picked with a top-2 logit gap under it are recorded (0: none;
    default: `runtime.ties.default_margin` of the artifact)."""

    def __init__(self, engine: Engine, drafter=None, tie_margin: float | None = None):
        self.stepper = Stepper(engine)
        self.engine, self.layout = engine, self.stepper.layout
        if isinstance(drafter, str):
            from mlpdeploy.runtime.speculative import make_drafter

            drafter = make_drafter(drafter, engine)
        self.drafter = drafter
        self.tie_margin = default_margin(engine.manifest) if tie_margin is None else tie_margin

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling | None = None,
        stop_tokens: Sequence[int] = (),
        on_token: Callable[[int, int], None] | None = None,
        pad_token: int = 0,
    ) -> Generation:
        """Generate up to `max_new_tokens` for each prompt; `on_token(prompt index, token)` streams them."""
        sampling = sampling or Sampling()
        self.check(prompts, max_new_tokens)
        if self.drafter is not None:
            from mlpdeploy.runtime.speculative.loop import speculative_generate

            return speculative_generate(self.stepper, self.drafter, prompts, max_new_tokens, sampling, stop_tokens, on_token,
                                        pad_token, self.tie_margin)
        return self._plain(prompts, max_new_tokens, sampling, stop_tokens, on_token, pad_token)

    def _plain(self, prompts, max_new_tokens, sampling, stop_tokens, on_token, pad_token) -> Generation:
        rng = np.random.default_rng(sampling.seed)
        batch = len(prompts)
        tokens: list[list[int]] = [[] for _ in prompts]
        finish = ["length"] * batch
        done = np.zeros(batch, bool)
        ties = TieRecorder(batch, self.tie_margin) if sampling.greedy and self.tie_margin else None
        start = began = time.perf_counter()
        logits, state = self.prefill(prompts, max_new_tokens, pad_token)
        state.reuse_logits = True  # each step's logits are used before the next step
        result = Generation(tokens, finish, prefill_seconds=time.perf_counter() - start)
        for step in range(max_new_tokens):
            next_ids = sampling.pick(logits, rng)
            for row, token in enumerate(next_ids.tolist()):
                if done[row]:
                    continue
                if ties is not None:
                    ties.record(row, len(tokens[row]), logits[row])
                tokens[row].append(token)
                if on_token is not None:
                    on_token(row, token)
                if token in stop_tokens:
                    done[row], finish[row] = True, "stop"
            if done.all() or step == max_new_tokens - 1:
                break
            start = time.perf_counter()
            logits = self.advance(state, next_ids)
            result.step_seconds.append(time.perf_counter() - start)
        result.total_seconds = time.perf_counter() - began
        result.near_ties = ties.ties if ties is not None else [[] for _ in range(batch)]
        return result

    def prefill(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, pad_token: int = 0) -> tuple[np.ndarray, StepState]:
        """Run the (left-padded) prompts with an empty cache sized for `max_new_tokens` more;
        the logits of each prompt's last token [batch, vocab] and the state to continue from."""
        self.check(prompts, max_new_tokens)
        return self.stepper.prefill(prompts, max(len(p) for p in prompts) + max_new_tokens, pad_token)

    def advance(self, state: StepState, next_ids: np.ndarray) -> np.ndarray:
        """Feed one token per row [batch]; the next logits [batch, vocab]."""
        return self.stepper.step(state, np.asarray(next_ids, np.int64)[:, None])[:, -1]

    def check(self, prompts, max_new_tokens: int) -> None:
        """A one-line error if the prompts or `max_new_tokens` do not fit the model."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise MlpdeployError("every prompt needs at least one token")
        if max_new_tokens < 1:
            raise MlpdeployError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.layout.max_positions:
            raise MlpdeployError(
                f"a prompt of {longest} tokens plus {max_new_tokens} new ones exceeds the model's {self.layout.max_positions} "
                "positions; shorten the prompt or ask for fewer tokens"
            )
