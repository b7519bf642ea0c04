"""ONNX Runtime CPU latency of a LLaMA-shaped gated-MLP stack, unfused vs fuse-gated-mlp, side by side.

    python bench/gated_mlp_cpu.py [--layers 4] [--d 1024] [--h 2816] [--threads N]
                                  [--repeats 15] [--warmup 3] [--opt-level all] [--json PATH]

The stack is `x = x + mlp_i(rms_norm(x))` for each layer, mlp = down(silu(gate(x)) * up(x)),
exported with torch.onnx.export(dynamo=True) (dynamic batch/seq). The fused copy is the same
export after the `fuse-gated-mlp` pass. Both run in one process at the same shapes, the two
sessions timed alternately call by call (so drift on a shared machine hits both alike);
reported: median ms each and the ratio unfused/fused (> 1: fused is faster), and the ratio of
the minima (less sensitive to other load on a shared machine).

What to expect on CPU: ONNX Runtime inlines GatedMLP's function body, so the fused graph
differs only in doing ONE MatMul of width 2h (plus a Split) instead of two of width h. At
batch 1 the MLP streams its weights from memory and both forms read the same bytes; at large
batch a wider GEMM amortizes packing of x once instead of twice, against one extra copy of
the [tokens, 2h] activations by the Split.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, cpu_session, machine, write_results  # noqa: E402

from mlpdeploy.passes.pipeline import PassSpec, run_pipeline  # noqa: E402

SHAPES = {"prefill b1 x 128": (1, 128), "prefill b16 x 128": (16, 128), "decode b1 x 1": (1, 1)}
LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


class MLP(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(d, h, bias=False), nn.Linear(d, h, bias=False), nn.Linear(h, d, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, d: int, h: int):
        super().__init__()
        self.norm, self.mlp = nn.RMSNorm(d), MLP(d, h)

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class Stack(nn.Module):
    def __init__(self, d: int, h: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(Layer(d, h) for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def export(module: nn.Module, d: int) -> ir.Model:
    batch, seq = torch.export.Dim("batch", max=64), torch.export.Dim("seq", max=4096)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (torch.randn(2, 8, d),), dynamo=True, dynamic_shapes=({0: batch, 1: seq},), input_names=["x"], verbose=False
        )
    return program.model


def time_pair(a, b, warmup: int, repeats: int) -> tuple[list[float], list[float]]:
    """Alternate a() and b() call by call; ms per call for each."""
    for _ in range(warmup):
        a(), b()
    times_a, times_b = [], []
    for i in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)) if i % 2 == 0 else ((b, times_b), (a, times_a)):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return times_a, times_b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--h", type=int, default=2816)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--opt-level", choices=LEVELS, default="all", help="ORT graph optimization level for both sessions")
    parser.add_argument("--json", default=str(RESULTS / "gated_mlp_cpu.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    stack = Stack(args.d, args.h, args.layers).eval()
    start = time.perf_counter()
    unfused = export(stack, args.d)
    export_s = time.perf_counter() - start
    fused = ir.from_proto(ir.to_proto(unfused))
    start = time.perf_counter()
    report = run_pipeline(fused, [PassSpec("fuse-gated-mlp")])[0]
    rewrite_s = time.perf_counter() - start
    if report["rewritten"] != args.layers:
        raise SystemExit(f"fuse-gated-mlp fused {report['rewritten']} of {args.layers} MLPs: {report['skipped']}")
    sessions = {"unfused": cpu_session(unfused, args.threads, level=LEVELS[args.opt_level]), "fused": cpu_session(fused, args.threads, level=LEVELS[args.opt_level])}

    info = {**machine(), "ort_intra_op_threads": args.threads, "ort_opt_level": args.opt_level}
    print(f"gated-MLP stack: {args.layers} layers, d={args.d}, h={args.h}, fp32, "
          f"{sum(p.numel() for p in stack.parameters()) / 1e6:.1f} M params; export {export_s:.1f} s, rewrite {rewrite_s:.2f} s")
    print(f"machine: {info['cpu']}, {info['cores']} cores; ONNX Runtime {info['onnxruntime']} CPU, "
          f"{args.threads} intra-op threads, optimization level {args.opt_level}")
    print(f"{'shape':20s} {'unfused ms':>11s} {'fused ms':>10s} {'unfused/fused':>14s} {'(min/min)':>10s} {'max |diff|':>11s}")
    results = {}
    rng = np.random.default_rng(0)
    for label, (batch, seq) in SHAPES.items():
        feed = {"x": rng.standard_normal((batch, seq, args.d)).astype(np.float32)}
        outs = {k: s.run(None, feed)[0] for k, s in sessions.items()}
        diff = float(np.abs(outs["fused"] - outs["unfused"]).max())
        repeats = max(3, args.repeats if batch * seq <= 128 else args.repeats // 2)
        t_unfused, t_fused = time_pair(
            lambda feed=feed: sessions["unfused"].run(None, feed), lambda feed=feed: sessions["fused"].run(None, feed), args.warmup, repeats
        )
        med_u, med_f = statistics.median(t_unfused), statistics.median(t_fused)
        results[label] = {
            "batch": batch, "seq": seq, "repeats": repeats,
            "unfused_ms": round(med_u, 3), "fused_ms": round(med_f, 3), "unfused_over_fused": round(med_u / med_f, 3),
            "unfused_min_ms": round(min(t_unfused), 3), "fused_min_ms": round(min(t_fused), 3),
            "min_ratio": round(min(t_unfused) / min(t_fused), 3),
            "unfused_ms_all": [round(t, 3) for t in t_unfused], "fused_ms_all": [round(t, 3) for t in t_fused],
            "max_abs_diff": diff,
        }
        min_ratio = min(t_unfused) / min(t_fused)
        print(f"{label:20s} {med_u:11.2f} {med_f:10.2f} {med_u / med_f:13.3f}x {min_ratio:9.3f}x {diff:11.2e}", flush=True)
    out = write_results("gated_mlp_cpu", {
        "machine": info,
        "config": {"layers": args.layers, "d": args.d, "h": args.h, "dtype": "float32", "warmup": args.warmup},
        "pass_report": report,
        "results": results,
    })
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
