"""Baseline: torch eager vs the ONNX Runtime build of each zoo model, side by side, one run.

    python bench/ort_vs_torch.py [--models llama-tiny,vit-tiny] [--threads 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, median_ms, write_results  # noqa: E402

from mlpdeploy.backends import get_backend  # noqa: E402
from mlpdeploy.backends.onnxruntime import OrtOptions  # noqa: E402
from mlpdeploy.export import export_model  # noqa: E402
from mlpdeploy.model import generate_inputs, load_model  # noqa: E402
from mlpdeploy.zoo import ZOO  # noqa: E402


def bench_model(name: str, threads: int, workdir: Path) -> dict:
    bundle = load_model(name)
    exported = export_model(bundle, workdir / f"{name}.onnx")
    built = get_backend("onnxruntime").build(exported.model_path, workdir / f"{name}.ort.onnx", OrtOptions(device="cpu"))
    feed = generate_inputs(bundle.inputs)
    args = [torch.from_numpy(feed[s.name]) for s in bundle.inputs]
    runner = built.candidate.make_runner("ort")
    runner.activate()
    with torch.no_grad():
        torch_ms = median_ms(lambda: bundle.module(*args))
    ort_ms = median_ms(lambda: runner.infer(feed))
    runner.deactivate()
    return {
        "inputs": {k: list(v.shape) for k, v in feed.items()},
        "torch_ms": round(torch_ms, 3),
        "ort_ms": round(ort_ms, 3),
        "torch_over_ort": round(torch_ms / ort_ms, 2),
        "onnx_bytes": exported.model_path.stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(n for n in ZOO if n.endswith("-tiny")))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            results[name] = bench_model(name, args.threads, Path(tmp))
            r = results[name]
            print(f"{name:16s} torch {r['torch_ms']:8.3f} ms   ort {r['ort_ms']:8.3f} ms   torch/ort {r['torch_over_ort']:.2f}x")
    print(f"machine: {machine()}")
    print(f"wrote {write_results('ort_vs_torch', {'threads': args.threads, 'models': results}, args.json)}")


if __name__ == "__main__":
    main()
