"""Peak resident memory per stage of a run, measured in this process.

On Linux the kernel's high-water mark (`VmHWM` in /proc/self/status) is reset at every stage
boundary (writing 5 to /proc/self/clear_refs), so each stage's peak is its own, not the
process's so far. Stages nest (`export` holds `torch.onnx.export` and `write`): a boundary
first folds the current high-water mark into every open stage, so an outer stage's peak is
the highest of its own and its children's. Where the mark cannot be reset (other systems),
the peak reported is the process's peak so far (getrusage), and `exact` says so.

Resident memory counts what the process touched of memory-mapped files too (weights read
from external data), as `ru_maxrss` and /usr/bin/time do.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import gc
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """This process's resident memory now, MiB (0 where the system does not say)."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else 0.0


def peak_rss_mib() -> float:
    """This process's peak resident memory since the last reset (or its start), MiB."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib / 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def reset_peak() -> bool:
    """Reset the peak to the resident memory now (Linux ≥ 4.0); False where it cannot be."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc `malloc_trim`), so a
    stage that ends is not charged for what an earlier one freed but the allocator kept."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class StageMemory:
    """One stage's time and memory (resident at its start and end, and its peak, MiB), and its steps."""

    start_mib: float
    peak_mib: float = 0.0
    end_mib: float = 0.0
    seconds: float = 0.0
    exact: bool = True  # False: `peak_mib` is the process's peak so far, not this stage's own
    steps: dict[str, "StageMemory"] = field(default_factory=dict)

    def to_json(self) -> dict:
        data = {"seconds": round(self.seconds, 3), "peak_rss_mib": round(self.peak_mib, 1),
                "rss_start_mib": round(self.start_mib, 1), "rss_end_mib": round(self.end_mib, 1)}
        if not self.exact:
            data["peak_is_process_peak"] = True
        if self.steps:
            data["steps"] = {name: step.to_json() for name, step in self.steps.items()}
        return data


class MemoryTracker:
    """Measures the time and peak resident memory of nested stages (see the module docstring).

    `tracker.stage(name)` measures a block; inside `tracking(tracker)`, library code marks its
    own steps with `step(name)`, which land in the innermost open stage (and cost nothing when
    no tracker is active)."""

    def __init__(self) -> None:
        self.stages: dict[str, StageMemory] = {}
        self._open: list[StageMemory] = []

    def _fold(self) -> None:
        peak = peak_rss_mib()
        for stage in self._open:
            stage.peak_mib = max(stage.peak_mib, peak)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[StageMemory]:
        """Measure the block as stage `name` (a step of the innermost open stage, if any)."""
        self._fold()
        exact = reset_peak()
        record = StageMemory(start_mib=rss_mib(), exact=exact)
        record.peak_mib = record.start_mib
        (self._open[-1].steps if self._open else self.stages)[name] = record
        self._open.append(record)
        start = time.perf_counter()
        try:
            yield record
        finally:
            record.seconds = time.perf_counter() - start
            self._fold()
            self._open.pop()
            record.end_mib = rss_mib()
            if exact:
                reset_peak()  # the enclosing stages keep what they saw in `_fold`


_TRACKER: contextvars.ContextVar[MemoryTracker | None] = contextvars.ContextVar("mlpdeploy_memory_tracker", default=None)


@contextlib.contextmanager
def tracking(tracker: MemoryTracker) -> Iterator[MemoryTracker]:
    """Within the block, `step(...)` calls record into `tracker`."""
    token = _TRACKER.set(tracker)
    try:
        yield tracker
    finally:
        _TRACKER.reset(token)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Mark a step of the current stage (time and peak memory), when a tracker is active."""
    tracker = _TRACKER.get()
    if tracker is None:
        yield
        return
    with tracker.stage(name):
        yield
