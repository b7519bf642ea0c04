"""Shared benchmark plumbing: timing, machine description, JSON output."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

RESULTS = Path(__file__).parent / "results"


# Every session a benchmark times side by side runs without spin-waiting threads: with spinning (ONNX
# Runtime's default) a session's idle pool keeps spinning after its run and takes the CPUs from the
# next variant in the round robin — measured on this 2-core machine: the same model 3 ms or 24 ms at
# batch 16 depending on its place in the rotation.
NO_SPINNING = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}

# Decoders are timed as users run them, threads spinning (onnxruntime-genai and `generate` alike), so
# a benchmark that takes turns between their sessions waits this long (untimed) before each turn:
# an idle session's threads spin on for 20-100 ms after its run (measured on this 2-core machine:
# SmolLM2 int4 steps 15 ms right after another session's step with a 20 ms pause, 6.8 ms after
# 100 ms, 6.2 ms alone), and a prefill timed in that window pays for them.
SETTLE_SECONDS = 0.2


def settle() -> None:
    """Let the previous variant's idle threads stop spinning before the next one is timed."""
    time.sleep(SETTLE_SECONDS)


def cpu_session(model, threads: int, kernels: Path | None = None, level=None):
    """An ONNX Runtime CPU session on `threads` intra-op threads for `model` (an onnx_ir Model, a
    ModelProto, serialized bytes or a path), with mlpdeploy's compiled kernels when `kernels` names
    the library and at graph optimization `level` (an ort.GraphOptimizationLevel) when given."""
    import onnx
    import onnx_ir as ir
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    for key, value in NO_SPINNING.items():
        options.add_session_config_entry(key, value)
    if level is not None:
        options.graph_optimization_level = level
    if kernels is not None:
        from mlpdeploy.plugins.ort import library

        library.register(options, kernels)
    if isinstance(model, ir.Model):
        model = ir.to_proto(model)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options, providers=["CPUExecutionProvider"])


def artifact_session(artifact: Path, threads: int):
    """An ONNX Runtime session for a model mlpdeploy built, with the settings its build saved (as
    `Engine.load` makes it), on `threads` intra-op threads, without spinning (NO_SPINNING)."""
    from mlpdeploy.backends.onnxruntime.loader import session_from_artifact
    from mlpdeploy.runtime.engine import resolve_artifact

    return session_from_artifact(resolve_artifact(artifact), threads=threads, config_entries=NO_SPINNING)


def median_ms(fn: Callable[[], object], warmup: int = 3, repeats: int = 20) -> float:
    """Median wall time of `fn` in milliseconds after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def machine() -> dict:
    """What the numbers were measured on."""
    import onnxruntime
    import torch

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],  # > cores: other work ran beside the benchmark
    }


# The packages whose versions a result names (those not installed are left out).
VERSIONED = ("mlpdeploy", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxruntime-genai", "onnxscript", "onnx-ir",
             "numpy", "transformers", "tensorrt", "tensorrt-rtx-cu13-bindings", "triton")


def versions(packages: tuple[str, ...] = VERSIONED) -> dict:
    """The versions of what was measured: the `packages` installed, and the commit of this checkout."""
    found = {}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty", "--abbrev=12"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if commit:
        found["commit"] = commit
    return found


def stamp(name: str) -> dict:
    """What heads every result file: the benchmark's name, when (UTC), the machine and the versions."""
    return {"benchmark": name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "versions": versions()}


def write_results(name: str, data: dict, path: str | Path | None = None) -> Path:
    """Write `data` under its stamp (name, date, machine, versions; `data` may extend "machine") as JSON to
    `path` or bench/results/NAME.json, atomically. `make bench` renders every such file into BENCHMARKS.md."""
    from mlpdeploy.atomic import write_json

    head = stamp(name)
    if isinstance(data.get("machine"), dict):
        data = {**data, "machine": {**head["machine"], **data["machine"]}}
    return write_json(Path(path) if path else RESULTS / f"{name}.json", {**head, **data})


def run_queue_seconds() -> float:
    """Seconds this process has waited for a CPU so far (Linux schedstat), 0 where unknown.

    On a shared machine, a timed sample during which this grew by more than a few percent of
    the sample's wall time was slowed by other work; benchmarks report medians over the rest.
    """
    try:
        return int(Path(f"/proc/{os.getpid()}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class Sampler:
    """Timed samples, each marked clean when the process barely waited for a CPU during it."""

    def __init__(self, max_wait_fraction: float = 0.05):
        self.samples: list[float] = []
        self.clean: list[bool] = []
        self.max_wait_fraction = max_wait_fraction

    def call(self, fn: Callable, *args):
        """`fn(*args)`, timed as one sample; returns what it returns."""
        waited, start = run_queue_seconds(), time.perf_counter()
        result = fn(*args)
        self.add(time.perf_counter() - start, run_queue_seconds() - waited)
        return result

    def add(self, seconds: float, waited: float = 0.0) -> None:
        self.samples.append(seconds)
        self.clean.append(waited <= self.max_wait_fraction * seconds)

    def summary_ms(self) -> dict:
        """Median and p90 over the clean samples (all of them when too few are clean)."""
        clean = [s for s, ok in zip(self.samples, self.clean) if ok]
        use = clean if len(clean) >= max(3, len(self.samples) // 4) else self.samples
        ordered = sorted(use)
        return {
            "p50_ms": statistics.median(use) * 1e3,
            "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3,
            "samples": len(self.samples),
            "clean": len(clean),
        }


def timed_threads(clients: int, worker: Callable[[int, threading.Barrier], None]) -> float:
    """Run `worker(k, barrier)` in `clients` threads; each waits on `barrier` when ready to start.
    Returns the wall seconds from the moment all are ready until the last one ends."""
    barrier = threading.Barrier(clients + 1)
    threads = [threading.Thread(target=worker, args=(k, barrier)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start
