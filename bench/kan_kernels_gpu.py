"""GPU: the KAN Triton kernels — GroupRational's bandwidth as a fraction of device copy bandwidth,
BSplineKAN and FANLayer vs torch eager — each checked against its torch reference.

    python bench/kan_kernels_gpu.py --json PATH [--dtypes fp16,bf16,fp32] [--smoke]

GroupRational on [16, 197, 768] and [64, 197, 3072] (ViT-B / ViT-B MLP hidden), 8 groups,
degrees (5, 4), form A: the kernel's bytes moved (one read and one write of x) per second,
over `torch.clone`'s (the device's copy bandwidth, same bytes); the torch reference eager
(KAT's pure-torch path) for comparison. BSplineKAN (efficient-kan layer 1024 → 1024, grid 5,
cubic) and FANLayer (1024 → 1024, P = 256) at 2048 tokens: Triton vs the torch reference.
Timing: triton.testing.do_bench medians (CUDA events). `--smoke` runs tiny shapes on CPU
through Triton's interpreter (perf_counter): a plumbing check whose numbers mean nothing.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gpu_common import preflight, time_ms, write_json  # noqa: E402

DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
TOLERANCE = {"float16": 1e-2, "bfloat16": 5e-2, "float32": 1e-4}  # max |error| / max(1, max |ref|)
RATIONAL_SHAPES = [(16, 197, 768), (64, 197, 3072)]
SMOKE_RATIONAL_SHAPES = [(2, 5, 64)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--dtypes", default="fp16,bf16,fp32")
    p.add_argument("--smoke", action="store_true", help="CPU Triton interpreter, tiny shapes: plumbing check only")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    status = preflight("kan_kernels_gpu", args.smoke)
    if status is not None:
        return status
    import torch
    import triton

    device = "cpu" if args.smoke else "cuda"
    name = "cpu (Triton interpreter, --smoke)" if args.smoke else torch.cuda.get_device_name()
    print(f"device: {name}   torch {torch.__version__}   triton {triton.__version__}")
    timer = functools.partial(time_ms, args.smoke)
    rows, failures = [], []
    for dtype in (DTYPES[d] for d in args.dtypes.split(",")):
        for row in [*rational_rows(torch, device, dtype, timer, args.smoke), *layer_rows(torch, device, dtype, timer, args.smoke)]:
            rows.append(row)
            if not row["ok"]:
                failures.append(f"{row['op']}/{row['shape']}/{dtype}: error {row['max_err']:.3g}")
            print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    data = {"benchmark": "kan_kernels_gpu", "smoke": args.smoke, "device": name,
            "machine": {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__},
            "timing": "perf_counter median (interpreter)" if args.smoke else "triton.testing.do_bench median, ms",
            "results": rows, "failures": failures}
    if args.json:
        write_json(args.json, data)
        print(f"wrote {args.json}")
    if failures:
        print("numerics failures: " + "; ".join(failures))
        return 1
    return 0


def _err(y, ref) -> float:
    return (y.float() - ref.float()).abs().max().item() / max(1.0, ref.float().abs().max().item())


def rational_rows(torch, device, dtype, timer, smoke):
    from mlpdeploy.plugins.group_rational.kernel import group_rational_triton
    from mlpdeploy.plugins.group_rational.presets import preset
    from mlpdeploy.plugins.group_rational.reference import group_rational

    dt = getattr(torch, dtype)
    num, den = (t.to(device=device, dtype=dt) for t in preset("swish", "A", 8))
    for shape in SMOKE_RATIONAL_SHAPES if smoke else RATIONAL_SHAPES:
        x = torch.randn(shape, device=device, generator=torch.Generator(device=device).manual_seed(0)).to(dt)
        y = group_rational_triton(x, num, den, "A")
        err = _err(y, group_rational(x.float(), num.float(), den.float(), "A"))
        t_kernel = timer(lambda x=x: group_rational_triton(x, num, den, "A"))
        t_copy = timer(lambda x=x: x.clone())
        t_torch = timer(lambda x=x: group_rational(x, num, den, "A"))
        gb = 2 * x.numel() * x.element_size() / 1e9
        yield {"op": "GroupRational", "shape": list(shape), "dtype": dtype, "triton_ms": round(t_kernel, 4), "copy_ms": round(t_copy, 4),
               "torch_ms": round(t_torch, 4), "triton_GBps": round(gb / t_kernel * 1e3, 1), "copy_GBps": round(gb / t_copy * 1e3, 1),
               "fraction_of_copy_bandwidth": round(t_copy / t_kernel, 3), "speedup_vs_torch": round(t_torch / t_kernel, 2),
               "max_err": err, "ok": err <= TOLERANCE[dtype]}


def layer_rows(torch, device, dtype, timer, smoke):
    from mlpdeploy.plugins.bspline_kan.kernel import bspline_kan_triton
    from mlpdeploy.plugins.bspline_kan.onnx_function import random_weights as kan_weights
    from mlpdeploy.plugins.bspline_kan.reference import bspline_kan
    from mlpdeploy.plugins.fan_layer.kernel import fan_layer_triton
    from mlpdeploy.plugins.fan_layer.onnx_function import random_weights as fan_weights
    from mlpdeploy.plugins.fan_layer.reference import fan_layer

    dt = getattr(torch, dtype)
    tokens, width = (5, 48) if smoke else (2048, 1024)
    x = (torch.rand(tokens, width, device=device, generator=torch.Generator(device=device).manual_seed(1)) * 2 - 1).to(dt)
    cases = [
        ("BSplineKAN", bspline_kan_triton, bspline_kan, [torch.from_numpy(v) for v in kan_weights(width, width).values()], ()),
        ("FANLayer", fan_layer_triton, fan_layer, [torch.from_numpy(v) for v in fan_weights(width, width // 4, width // 2).values()], ("gelu",)),
    ]
    for op, kernel, reference, weights, attrs in cases:
        w = [t.to(device=device, dtype=dt) for t in weights]
        err = _err(kernel(x, *w, *attrs), reference(x.float(), *[t.float() for t in w], *attrs))
        t_kernel = timer(lambda kernel=kernel, w=w, attrs=attrs: kernel(x, *w, *attrs))
        t_torch = timer(lambda reference=reference, w=w, attrs=attrs: reference(x, *w, *attrs))
        yield {"op": op, "shape": [tokens, width], "dtype": dtype, "triton_ms": round(t_kernel, 4), "torch_ms": round(t_torch, 4),
               "speedup_vs_torch": round(t_torch / t_kernel, 2), "max_err": err, "ok": err <= TOLERANCE[dtype]}


if __name__ == "__main__":
    sys.exit(main())
