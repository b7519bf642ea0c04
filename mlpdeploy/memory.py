"""Time and peak resident memory of each stage of a run (and of the steps inside it).

A small watcher process samples this process's resident set size (/proc/PID/statm) every
WATCH_INTERVAL seconds and keeps, for each open stage, the highest value it saw; a stage asks
it for its peak when it ends (the watcher samples once more first). Stages nest: `export`
holds `torch.onnx.export` and `save`. A separate process, because a thread in this one needs
the GIL to sample and would miss the peaks of long native calls that hold it (serializing a
protobuf); and sampling, because the kernel's own high-water mark (VmHWM) can only be reset
for the whole process, which would also hide the true peak from /usr/bin/time and getrusage.

Resident memory counts the pages of memory-mapped files the process touched (weights read from
external data or safetensors), as `ru_maxrss` and /usr/bin/time do. Where there is no /proc,
a stage's peak is the process's peak so far (getrusage) and its record says so.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import ctypes
import gc
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

WATCH_INTERVAL = 0.002
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024 if hasattr(os, "sysconf") else 4

# The watcher: "o" opens a window (its peak starts at the RSS now), "c" closes the innermost
# one and answers its peak in KiB; it samples between commands and exits when stdin closes.
_WATCHER = r"""
import os, select, sys
statm, page, interval = f"/proc/{sys.argv[1]}/statm", int(sys.argv[2]), float(sys.argv[3])
windows = []
def rss():
    try:
        with open(statm) as f:
            return int(f.read().split()[1]) * page
    except (OSError, ValueError, IndexError):
        return 0
fd = sys.stdin.fileno()
while True:
    ready, _, _ = select.select([fd], [], [], interval)
    now = rss()
    windows[:] = [max(w, now) for w in windows]
    if not ready:
        continue
    commands = os.read(fd, 4096)
    if not commands:
        break
    for command in commands.decode():
        if command == "o":
            windows.append(now)
        elif command == "c":
            sys.stdout.write(f"{windows.pop() if windows else now}\n")
            sys.stdout.flush()
"""


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """This process's resident memory now, MiB (0 where the system does not say)."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else 0.0


def process_peak_mib() -> float:
    """This process's peak resident memory since it started, MiB."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib / 1024
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc `malloc_trim`), so a
    stage that ends is not charged for what an earlier one freed but the allocator kept."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _Watcher:
    """The watcher process of this process (started on first use, shared by every tracker)."""

    _instance: _Watcher | None = None

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", _WATCHER, str(os.getpid()), str(_PAGE_KIB), str(WATCH_INTERVAL)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        atexit.register(self.close)

    @classmethod
    def get(cls) -> _Watcher | None:
        """The running watcher, or None where this system has no /proc to sample."""
        if not Path(f"/proc/{os.getpid()}/statm").exists():
            return None
        if cls._instance is None or cls._instance.proc.poll() is not None or cls._instance.pid != os.getpid():
            cls._instance = cls()
        return cls._instance

    @property
    def pid(self) -> int:
        return int(self.proc.args[4])  # the process it watches (a fork must start its own)

    def open(self) -> None:
        self.proc.stdin.write("o")
        self.proc.stdin.flush()

    def close_window(self) -> float:
        """The innermost open window's peak, MiB."""
        self.proc.stdin.write("c")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline()) / 1024

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1)


@dataclass
class StageMemory:
    """One stage's time and memory (resident at its start and end, and its peak, MiB), and its steps."""

    start_mib: float
    peak_mib: float = 0.0
    end_mib: float = 0.0
    seconds: float = 0.0
    sampled: bool = True  # False: no watcher here, `peak_mib` is the process's peak so far
    steps: dict[str, StageMemory] = field(default_factory=dict)

    def to_json(self) -> dict:
        data = {"seconds": round(self.seconds, 3), "peak_rss_mib": round(self.peak_mib, 1),
                "rss_start_mib": round(self.start_mib, 1), "rss_end_mib": round(self.end_mib, 1)}
        if not self.sampled:
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

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[StageMemory]:
        """Measure the block as stage `name` (a step of the innermost open stage, if any)."""
        watcher = _Watcher.get()
        record = StageMemory(start_mib=rss_mib(), sampled=watcher is not None)
        (self._open[-1].steps if self._open else self.stages)[name] = record
        self._open.append(record)
        if watcher is not None:
            watcher.open()
        start = time.perf_counter()
        try:
            yield record
        finally:
            record.seconds = time.perf_counter() - start
            record.end_mib = rss_mib()
            record.peak_mib = max(watcher.close_window() if watcher is not None else process_peak_mib(), record.start_mib, record.end_mib)
            self._open.pop()


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
