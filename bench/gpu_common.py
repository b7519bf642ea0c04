"""Shared by the GPU benchmarks (bench/gpu.sh): checks before timing, the timer, JSON output.

Standard library only at import time (the GPU machine may lack onnx and friends); torch and
triton are imported where they are needed.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from common import versions as common_versions  # standard library only, like this module


def preflight(name: str, smoke: bool) -> int | None:
    """Set up Triton's mode; an exit status (2) with a printed reason when nothing can be measured."""
    if smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    elif os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print(f"{name}: TRITON_INTERPRET is set; unset it (or pass --smoke) to time the compiled kernel")
        return 2
    import torch

    if not smoke and not torch.cuda.is_available():
        print(f"{name}: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured")
        return 2
    try:
        import triton  # noqa: F401
    except ImportError:
        print(f"{name}: triton is not installed: pip install 'mlpdeploy[triton]'")
        return 2
    return None


def time_ms(smoke: bool, fn) -> float:
    """Median ms of `fn`: triton.testing.do_bench (CUDA events) on a GPU, perf_counter in the interpreter."""
    if smoke:
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def stamp(name: str) -> dict:
    """What heads every result file (as bench/common.py's stamp): name, date (UTC), the GPU, versions."""
    import torch

    versions = common_versions(("mlpdeploy", "torch", "triton", "tensorrt"))
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none (Triton's CPU interpreter)"
    return {"benchmark": name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"gpu": gpu, "cuda": torch.version.cuda, "host": platform.node(), "cores": os.cpu_count()}, "versions": versions}


def write_json(path: Path, data: dict) -> None:
    """Write `data` under its stamp (stamp(); `data` may extend "machine") to `path` atomically (temp file + rename)."""
    head = stamp(data.get("benchmark") or Path(path).stem)
    data = {**head, **data, "machine": {**head["machine"], **data.get("machine", {})}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
