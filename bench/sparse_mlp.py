"""ONNX Runtime CPU latency of a ReLU MLP, dense vs `mlpdeploy::SparseMLP`, side by side, vs the ideal.

    python bench/sparse_mlp.py [--d 1024] [--h 4096] [--fraction 0.1 ...] [--rank 64] [--batch 1 4 16]
                               [--gated-sparsity 0.4 0.5] [--threads 2] [--repeats 30] [--json PATH]

Per batch size and fraction k/h, one process times, call by call in turn (drift on a shared
machine hits all alike):
  dense    Gemm(x, W_upᵀ) + b → Relu → Gemm(·, W_downᵀ) + b, the MLP as exported;
  body     SparseMLP's standard-op function body (TopK + ScatterElements + NonZero + Gather + Gemm), inlined by ORT;
  kernel   the same model with mlpdeploy's compiled CPU kernel registered (`--ort-kernels`);
  ideal    numpy: the same union's rows of W_up and W_downᵀ gathered and multiplied, selection
           NOT counted (the issue's "ideal": what reading only those rows costs).
The predictor is rank `--rank` (from W_up's SVD, so it picks truly large pre-activations);
its cost is in body and kernel. Reported: minimum ms over the rounds (medians in the JSON), ratio dense/x (> 1: faster than dense),
kernel/ideal. With --gated-sparsity, a SwiGLU MLP (d, h·11/16) dense vs threshold mode at those
sparsities (thresholds = quantiles of |silu(gate)| on random inputs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_session, write_results  # noqa: E402

from mlpdeploy.plugins.onnx_body import initializer  # noqa: E402
from mlpdeploy.plugins.ort import library  # noqa: E402
from mlpdeploy.plugins.sparse_mlp.onnx_function import make_model, random_weights  # noqa: E402
from mlpdeploy.plugins.sparse_mlp.reference import threshold_mask, topk_mask, union  # noqa: E402


def dense_model(w: dict[str, np.ndarray], gated: bool) -> ir.Model:
    """The dense MLP in standard ops, weights in the exporter's layout ([in, out] for MatMul, Gemm transB for W_up rows)."""
    x = ir.Value(name="x", shape=ir.Shape(["m", w["w_up"].shape[1]]), type=ir.TensorType(ir.DataType.FLOAT))
    inits = [initializer(n, w[n]) for n in ("w_up", "b_up", "w_down_t", "b_down")]
    nodes = [ir.Node("", "Gemm", [x, inits[0], inits[1]], attributes=[ir.AttrInt64("transB", 1)])]
    hidden = nodes[-1].outputs[0]
    if gated:
        inits += [initializer("w_gate", w["w_gate"]), initializer("b_gate", w["b_gate"])]
        nodes.append(ir.Node("", "Gemm", [x, inits[-2], inits[-1]]))
        nodes.append(ir.Node("", "Sigmoid", [nodes[-1].outputs[0]]))
        nodes.append(ir.Node("", "Mul", [nodes[-2].outputs[0], nodes[-1].outputs[0]]))
        nodes.append(ir.Node("", "Mul", [nodes[-1].outputs[0], hidden]))
    else:
        nodes.append(ir.Node("", "Relu", [hidden]))
    nodes.append(ir.Node("", "Gemm", [nodes[-1].outputs[0], inits[2], inits[3]]))
    nodes[-1].outputs[0].name = "y"
    graph = ir.Graph([x], [nodes[-1].outputs[0]], nodes=nodes, initializers=inits, opset_imports={"": 20})
    return ir.Model(graph, ir_version=10)


def call(sess: ort.InferenceSession, x: np.ndarray):
    return lambda: sess.run(None, {"x": x})


def gathered(x, w, u):
    """The ideal: numpy reads only the union's rows of W_up and W_downᵀ (fancy indexing copies them)."""
    w_up, b_up, w_dt, b_d = w["w_up"], w["b_up"], w["w_down_t"], w["b_down"]
    return lambda: np.maximum(x @ w_up[u].T + b_up[u], 0) @ w_dt[u] + b_d


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """The MINIMUM ms of each callable over `repeats` rounds, called in turn: on a shared, loaded
    machine the minimum is what a call costs when it is not preempted (medians are in the JSON too)."""
    for fn in fns.values():
        for _ in range(3):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    interleaved.medians = {name: statistics.median(t) for name, t in times.items()}
    return {name: min(t) for name, t in times.items()}


def bench_topk(args, lib, rng) -> list[dict]:
    w = random_weights(args.d, args.h, args.d, mode="topk", rank=args.rank, seed=0)
    dense = cpu_session(dense_model(w, gated=False), args.threads)
    rows = []
    for fraction in args.fraction:
        k = max(1, round(fraction * args.h))
        model = make_model(args.d, args.h, mode="topk", activation="relu", k=k, weights=w)
        body, kernel = cpu_session(model, args.threads), cpu_session(model, args.threads, lib)
        for batch in args.batch:
            x = rng.standard_normal((batch, args.d)).astype(np.float32)
            xt = torch.from_numpy(x)
            u = union(topk_mask(xt, torch.from_numpy(w["p_a"]), torch.from_numpy(w["p_b"]), k)).numpy()
            got = kernel.run(None, {"x": x})[0]
            assert np.allclose(got, body.run(None, {"x": x})[0], atol=1e-4), "kernel and body disagree"
            ms = interleaved({"dense": call(dense, x), "body": call(body, x), "kernel": call(kernel, x), "ideal": gathered(x, w, u)},
                             args.repeats)
            row = {"fraction": fraction, "k": k, "batch": batch, "union": int(u.size), "union_fraction": u.size / args.h,
                   **{f"{n}_ms": v for n, v in ms.items()},
                   **{f"{n}_median_ms": v for n, v in interleaved.medians.items()},
                   "dense_over_body": ms["dense"] / ms["body"], "dense_over_kernel": ms["dense"] / ms["kernel"],
                   "kernel_over_ideal": ms["kernel"] / ms["ideal"], "body_over_ideal": ms["body"] / ms["ideal"]}
            rows.append(row)
            print(f"k/h {fraction:5.2f} batch {batch:3d} union {u.size / args.h:6.1%}: dense {ms['dense']:.3f} ms, "
                  f"body {ms['body']:.3f} ({row['dense_over_body']:.2f}x), kernel {ms['kernel']:.3f} ({row['dense_over_kernel']:.2f}x), "
                  f"ideal {ms['ideal']:.3f}; kernel/ideal {row['kernel_over_ideal']:.2f}", flush=True)
    return rows


def bench_threshold(args, lib, rng) -> list[dict]:
    h = args.h * 11 // 16  # LLaMA's ratio
    w = random_weights(args.d, h, args.d, mode="threshold", seed=1)
    dense = cpu_session(dense_model(w, gated=True), args.threads)
    xs = torch.from_numpy(rng.standard_normal((256, args.d)).astype(np.float32))
    gate = torch.nn.functional.silu(xs @ torch.from_numpy(w["w_gate"]) + torch.from_numpy(w["b_gate"])).abs()
    rows = []
    for sparsity in args.gated_sparsity:
        t = float(torch.quantile(gate.flatten(), sparsity))
        model = make_model(args.d, h, mode="threshold", activation="silu", threshold=t, weights=w)
        body, kernel = cpu_session(model, args.threads), cpu_session(model, args.threads, lib)
        for batch in args.batch:
            x = rng.standard_normal((batch, args.d)).astype(np.float32)
            g = torch.nn.functional.silu(torch.from_numpy(x) @ torch.from_numpy(w["w_gate"]) + torch.from_numpy(w["b_gate"]))
            u = union(threshold_mask(g, torch.tensor([t]))).numpy()
            ms = interleaved({"dense": call(dense, x), "body": call(body, x), "kernel": call(kernel, x)}, args.repeats)
            row = {"sparsity": sparsity, "threshold": t, "batch": batch, "union_fraction": u.size / h, **{f"{n}_ms": v for n, v in ms.items()},
                   **{f"{n}_median_ms": v for n, v in interleaved.medians.items()},
                   "dense_over_body": ms["dense"] / ms["body"], "dense_over_kernel": ms["dense"] / ms["kernel"]}
            rows.append(row)
            print(f"SwiGLU d={args.d} h={h} sparsity {sparsity:.0%} batch {batch:3d} union {u.size / h:6.1%}: dense {ms['dense']:.3f} ms, "
                  f"body {ms['body']:.3f} ({row['dense_over_body']:.2f}x), kernel {ms['kernel']:.3f} ({row['dense_over_kernel']:.2f}x)", flush=True)
    return rows


def planned_fractions(path: str) -> dict[str, float]:
    """Each planned topk site's k/h (rounded to 1/1000, so equal fractions are timed once)."""
    plan = json.loads(Path(path).read_text())
    entry = next((p for p in plan["passes"] if p["name"] == "sparse-mlp"), None)
    if entry is None:
        raise SystemExit(f"{path} plans no sparse-mlp pass")
    hidden = {scope: d["hidden"] for scope, d in plan["analyses"]["sparsity"]["sites"].items()}
    return {scope: round(s["k"] / hidden[scope], 3) for scope, s in entry["sites"].items() if s["mode"] == "topk"}


def stack(rows: list[dict], planned: dict[str, float], batches: list[int]) -> list[dict]:
    """The planned MLP stack per batch: the sum over its layers of each variant's time at that layer's k/h."""
    out = []
    for batch in batches:
        by_fraction = {r["fraction"]: r for r in rows if r["batch"] == batch}
        total = {v: sum(by_fraction[f][f"{v}_ms"] for f in planned.values()) for v in ("dense", "body", "kernel", "ideal")}
        out.append({"batch": batch, **{f"{v}_ms": t for v, t in total.items()}, "dense_over_body": total["dense"] / total["body"],
                    "dense_over_kernel": total["dense"] / total["kernel"], "kernel_over_ideal": total["kernel"] / total["ideal"]})
        print(f"planned stack ({len(planned)} MLPs at k/h {', '.join(f'{f:.3f}' for f in planned.values())}) batch {batch:3d}: "
              f"dense {total['dense']:.3f} ms, body {total['body']:.3f} ({out[-1]['dense_over_body']:.2f}x), "
              f"kernel {total['kernel']:.3f} ({out[-1]['dense_over_kernel']:.2f}x), kernel/ideal {out[-1]['kernel_over_ideal']:.2f}", flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--h", type=int, default=4096)
    parser.add_argument("--fraction", type=float, nargs="+", default=[0.1, 0.2])
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--gated-sparsity", type=float, nargs="*", default=[0.4, 0.5])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--plan", default=None, help="a plan.json from `analyze --sparsity`: bench each planned layer's k/h, and their stack")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    planned = planned_fractions(args.plan) if args.plan else None
    if planned:
        args.fraction = sorted(set(planned.values()))
    lib = library.build_library(Path(__file__).parent / "results" / "ort-kernels")
    rng = np.random.default_rng(0)
    try:  # numpy's BLAS (the ideal) gets the same thread count as ONNX Runtime
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=args.threads)
    except ImportError:
        print("threadpoolctl is not installed: numpy's BLAS (the ideal) uses its default thread count")
    data = {"args": vars(args), "topk": bench_topk(args, lib, rng), "threshold": bench_threshold(args, lib, rng)}
    if planned:
        data["planned"] = {"fractions": planned, "stack": stack(data["topk"], planned, args.batch)}
    print(f"wrote {write_results('sparse_mlp', data, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
