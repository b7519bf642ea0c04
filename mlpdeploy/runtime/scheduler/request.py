"""A generation request inside the scheduler: its settings, its tokens as they come, its timings."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.sampling import Sampling, draw
from mlpdeploy.runtime.ties import NearTie, top2_gap

QUEUE_FULL = "Exceeds maximum queue size"  # Triton's message (and status UNAVAILABLE → HTTP 503) for a full queue


class QueueFull(MlpdeployError):
    """The scheduler's queue holds `max_queue_size` requests already."""

    def __init__(self):
        super().__init__(QUEUE_FULL)


class Request:
    """One sequence to generate. The scheduler fills `tokens` and ends it with `finish` ("stop",
    "length", "cancelled") or `error`; a consumer reads the tokens with `stream()` / `wait()`, or
    gets every event through `on_event(kind, value)` — ("token", id) then ("end", finish) or
    ("error", message) — called on the scheduler's thread (it must not block). `cancel()` frees
    the request's row at the scheduler's next step. Timings (perf_counter seconds): `arrived`,
    `admitted` (its prefill began), `token_times` (one per token); `reused_tokens`: prompt tokens
    whose cache was copied from an earlier prompt's (`prefix.PrefixCache`), not run."""

    def __init__(self, prompt: Sequence[int], max_tokens: int, sampling: Sampling | None = None, stop_tokens: Sequence[int] = (),
                 on_event: Callable[[str, object], None] | None = None, tie_margin: float = 0.0):
        self.prompt, self.max_tokens = [int(t) for t in prompt], int(max_tokens)
        self.sampling = sampling or Sampling()
        self.stops = frozenset(int(t) for t in stop_tokens)
        self.rng = np.random.default_rng(self.sampling.seed)
        self.tokens: list[int] = []
        self.near_ties: list[NearTie] = []
        self.finish: str | None = None
        self.error: str | None = None
        self.arrived, self.admitted = time.perf_counter(), None
        self.token_times: list[float] = []
        self.reused_tokens = 0
        self.tie_margin = tie_margin if self.sampling.greedy else 0.0
        self._on_event = on_event
        self._events: queue.SimpleQueue | None = None if on_event is not None else queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._done = threading.Event()
        self._wake: Callable[[], None] | None = None  # set by the scheduler: wakes its loop on cancel

    @property
    def reserved(self) -> int:
        """Cache columns the request may use: its prompt and every token it may generate."""
        return len(self.prompt) + self.max_tokens

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop generating; the scheduler frees the request's row at its next step (no effect once done)."""
        self._cancelled.set()
        if self._wake is not None:
            self._wake()

    def stream(self, timeout: float | None = None) -> Iterator[int]:
        """The new tokens as they come; returns when the request ends, raises if it failed."""
        if self._events is None:
            raise MlpdeployError("this request delivers its events to its on_event callback")
        while True:
            kind, value = self._events.get(timeout=timeout)
            if kind == "token":
                yield value
            elif kind == "error":
                raise MlpdeployError(value)
            else:
                return

    def wait(self, timeout: float | None = None) -> tuple[list[int], str]:
        """Block until the request ends: (new tokens, finish reason); raises if it failed."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the request did not finish within {timeout} s")
        if self.error is not None:
            raise MlpdeployError(self.error)
        return list(self.tokens), self.finish

    # --- the scheduler's side
    def pick(self, logits: np.ndarray) -> int:
        """The next token from one row of logits [vocab], as the request's sampling and seed say."""
        if self.sampling.greedy:
            self.record_tie(logits)
            return int(logits.argmax())
        return draw(self.sampling.probs(logits[None])[0], self.rng)

    def record_tie(self, logits: np.ndarray) -> None:
        """Note the next token as a near-tie when the top-2 gap of the logits that chose it is under the margin."""
        if self.tie_margin:
            gap = top2_gap(logits)
            if gap < self.tie_margin:
                self.near_ties.append(NearTie(len(self.tokens), gap))

    def emit(self, token: int) -> bool:
        """Record a new token; True when the request is finished by it (a stop token, or max_tokens)."""
        self.tokens.append(token)
        self.token_times.append(time.perf_counter())
        self._push("token", token)
        if token in self.stops:
            self.finish = "stop"
        elif len(self.tokens) >= self.max_tokens:
            self.finish = "length"
        return self.finish is not None

    def end(self, finish: str | None = None, error: str | None = None) -> None:
        """The request is over: finished (its `finish` or the one given) or failed with `error`."""
        if self.done:
            return
        self.finish = finish or self.finish
        self.error = error
        if error is not None:
            self._push("error", error)
        else:
            self._push("end", self.finish)
        self._done.set()

    def _push(self, kind: str, value) -> None:
        if self._on_event is not None:
            self._on_event(kind, value)
        else:
            self._events.put((kind, value))
