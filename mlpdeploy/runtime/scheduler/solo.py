"""The fallback for builds without per-row cache lengths: each request generates alone.

Builds whose attention is not ONNX Runtime's GroupQueryAttention with per-row lengths (built
before it, `--no-ort-fusions`, a layer the fusion did not match) cannot batch rows of different
lengths exactly. `SoloScheduler` gives them the `Scheduler`'s interface: each request runs the
runtime's batch-1 generate loop (`CachedGenerator`, speculative modes included) in a thread of its
own, at most `max_batch` at once; the rest wait, `max_queue_size` of them at most.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.generate import CachedGenerator
from mlpdeploy.runtime.sampling import Sampling
from mlpdeploy.runtime.scheduler.options import SchedulerOptions
from mlpdeploy.runtime.scheduler.request import QueueFull, Request


class _Cancelled(Exception):
    pass


class SoloScheduler:
    """One thread per request over a `CachedGenerator` (module docstring)."""

    def __init__(self, generator: CachedGenerator, options: SchedulerOptions | None = None):
        self.generator, self.options = generator, options or SchedulerOptions()
        self.observers: list = []
        self._slots = threading.BoundedSemaphore(self.options.max_batch)
        self._lock = threading.Lock()
        self._waiting = self._running = 0

    def check(self, prompt: Sequence[int], max_tokens: int) -> None:
        self.generator.check([prompt], max_tokens)

    def submit(self, prompt: Sequence[int], max_tokens: int, sampling: Sampling | None = None, stop_tokens: Sequence[int] = (),
               on_event: Callable[[str, object], None] | None = None) -> Request:
        self.check(prompt, max_tokens)
        request = Request(prompt, max_tokens, sampling, stop_tokens, on_event)
        with self._lock:
            if self.options.max_queue_size and self._running >= self.options.max_batch and self._waiting >= self.options.max_queue_size:
                raise QueueFull()
            self._waiting += 1
        threading.Thread(target=self._run, args=(request,), name="mlpdeploy-generate", daemon=True).start()
        return request

    def generate(self, prompt, max_tokens, sampling=None, stop_tokens=()) -> tuple[list[int], str]:
        return self.submit(prompt, max_tokens, sampling, stop_tokens).wait()

    def stats(self) -> dict:
        with self._lock:
            return {"active": self._running, "waiting": self._waiting}

    def close(self) -> None:
        pass

    def _run(self, request: Request) -> None:
        with self._slots:
            with self._lock:
                self._waiting -= 1
                self._running += 1
            try:
                self._generate(request)
            finally:
                with self._lock:
                    self._running -= 1
        for observer in self.observers:
            observer.finished(request)

    def _generate(self, request: Request) -> None:
        def on_token(_row: int, token: int) -> None:
            if request.cancelled:
                raise _Cancelled
            request.emit(token)

        if request.cancelled:
            request.end("cancelled")
            return
        request.admitted = time.perf_counter()
        try:
            result = self.generator.generate([request.prompt], request.max_tokens, request.sampling, sorted(request.stops), on_token=on_token)
            request.near_ties = list(result.near_ties[0])
            request.end(result.finish[0])
        except _Cancelled:
            request.end("cancelled")
        except MlpdeployError as exc:
            request.end(error=str(exc))
        except Exception as exc:  # noqa: BLE001 - reported to the request's consumer
            request.end(error=f"{type(exc).__name__}: {exc}")
