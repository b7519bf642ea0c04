"""Latency and throughput of one artifact at fixed input sizes, and what it costs in memory and bytes.

Every run feeds the same random inputs (generated from the manifest at the requested dynamic-dim
sizes); `warmup` runs are discarded, then runs are timed one by one until both `iterations` runs
and `min_seconds` have passed. Percentiles are over those runs (wall clock, this process).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.measure import percentile


@dataclass
class LatencyStats:
    dims: dict[str, int]
    samples: int  # items per run: the size of the batch dim (1 without one)
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # samples per second over the timed runs

    def to_json(self) -> dict:
        return asdict(self)


def measure_latency(run: Callable[[], object], dims: dict[str, int], samples: int, warmup: int = 5, iterations: int = 50,
                    min_seconds: float = 1.0) -> LatencyStats:
    """Time `run()`; see the module docstring for the protocol."""
    if warmup < 0 or iterations < 1:
        raise MlpdeployError(f"latency timing needs warmup >= 0 and iterations >= 1; got {warmup} and {iterations}")
    for _ in range(warmup):
        run()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < iterations or time.perf_counter() - started < min_seconds:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    ms = [t * 1e3 for t in times]
    return LatencyStats(
        dims=dict(dims), samples=samples, runs=len(times),
        p50_ms=percentile(ms, 50), p90_ms=percentile(ms, 90), p99_ms=percentile(ms, 99),
        mean_ms=float(np.mean(ms)), throughput=samples * len(times) / sum(times),
    )


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (getrusage; Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def model_bytes(model_path: Path) -> int:
    """Bytes on disk of an ONNX model: the file and the external-data files it names."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    locations = set()
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations.update(e.value for e in tensor.external_data if e.key == "location")
    return model_path.stat().st_size + sum((model_path.parent / loc).stat().st_size for loc in locations
                                            if (model_path.parent / loc).is_file())
