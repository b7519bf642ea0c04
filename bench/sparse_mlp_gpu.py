"""GPU: SparseMLP's Triton gather-GEMM kernels vs the dense MLP as cuBLAS GEMMs, at several k/h.

    python bench/sparse_mlp_gpu.py --json PATH [--shapes 1024x4096,4096x16384] [--fractions 0.05,0.1,0.2,0.3] [--tokens 1,4,16]
    python bench/sparse_mlp_gpu.py --smoke        (tiny shapes in Triton's interpreter: plumbing only, numbers meaningless)

Per shape d×h, tokens and k/h, medians from triton.testing.do_bench (fp16):
  dense         relu(x·W_upᵀ + b)·W_downᵀ + b, two cuBLAS GEMMs
  kernels       the two gather-GEMM Triton kernels for a given selection (kernel.gather_mlp_triton)
  torch_gather  the same selection in torch: index_select the rows, then two cuBLAS GEMMs
  op            the whole op, kernel.sparse_mlp_triton in topk mode (torch selection: predictor
                GEMMs + TopK + union, then the kernels)
Each point checks the kernels against an fp32 torch reference on the same selection (the GPU's
fp16 predictor may pick other near-tied neurons than an fp32 one would); exit 1 when off.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gpu_common import preflight, time_ms, write_json  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1024x4096,4096x16384", help="comma list of DxH")
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--fractions", default="0.05,0.1,0.2,0.3")
    parser.add_argument("--tokens", default="1,4,16")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    status = preflight("sparse_mlp_gpu", args.smoke)
    if status is not None:
        return status
    import torch

    device, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.float16)
    shapes = [(32, 64)] if args.smoke else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    rows = []
    for d, h in shapes:
        rows += bench_shape(args, d, h, device, dtype)
    failed = any(not r["ok"] for r in rows)
    if args.json:
        write_json(args.json, {"benchmark": "sparse_mlp_gpu", "smoke": args.smoke, "dtype": str(dtype),
                               "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)", "rows": rows})
    return 1 if failed else 0


def bench_shape(args, d: int, h: int, device: str, dtype) -> list[dict]:
    import torch

    from mlpdeploy.plugins.sparse_mlp.kernel import gather_mlp_triton, select, sparse_mlp_triton
    from mlpdeploy.plugins.sparse_mlp.onnx_function import random_weights

    w = {k: torch.from_numpy(v).to(device, dtype).contiguous()
         for k, v in random_weights(d, h, d, mode="topk", rank=min(args.rank, d), seed=0).items()}
    w_up_rows = w["w_up"]  # [h, d]
    rows = []
    for tokens in [int(t) for t in args.tokens.split(",")]:
        x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(tokens)).to(device, dtype)
        dense_ms = time_ms(args.smoke, lambda x=x: torch.relu(x @ w_up_rows.T + w["b_up"]) @ w["w_down_t"] + w["b_down"])
        for fraction in [float(f) for f in args.fractions.split(",")]:
            k = max(1, round(fraction * h))
            inputs = [w[n] for n in ("w_up", "b_up", "w_down_t", "b_down", "p_a", "p_b")] + [torch.tensor([k], device=device)]
            sel = select(x, inputs, "topk", "relu")
            u, scale = sel[0], sel[1]
            got = gather_mlp_triton(x, *sel).float().cpu()
            f32 = {n: t.float().cpu() for n, t in w.items()}
            uc = u.cpu()
            hidden = torch.relu(x.float().cpu() @ f32["w_up"][uc].T + f32["b_up"][uc]) * scale.float().cpu()
            ref = hidden @ f32["w_down_t"][uc] + f32["b_down"]
            err = float((got - ref).abs().max()) / max(1.0, float(ref.abs().max()))
            ok = err <= (1e-4 if dtype == torch.float32 else 5e-3)
            kernels_ms = time_ms(args.smoke, lambda x=x, sel=sel: gather_mlp_triton(x, *sel))
            torch_gather_ms = time_ms(args.smoke, lambda x=x, u=u, scale=scale: (
                torch.relu(x @ w_up_rows.index_select(0, u).T + w["b_up"].index_select(0, u)) * scale)
                @ w["w_down_t"].index_select(0, u) + w["b_down"])
            op_ms = time_ms(args.smoke, lambda x=x, inputs=inputs: sparse_mlp_triton(x, *inputs, mode="topk", activation="relu"))
            row = {"d": d, "h": h, "tokens": tokens, "fraction": fraction, "k": k, "union": int(u.numel()),
                   "dense_ms": dense_ms, "kernels_ms": kernels_ms, "torch_gather_ms": torch_gather_ms, "op_ms": op_ms,
                   "dense_over_kernels": dense_ms / kernels_ms, "dense_over_op": dense_ms / op_ms, "max_error": err, "ok": ok}
            rows.append(row)
            print(f"d {d} h {h} tokens {tokens:3d} k/h {fraction:.2f} (union {row['union']}): dense {dense_ms:.4f} ms, "
                  f"kernels {kernels_ms:.4f} ({row['dense_over_kernels']:.2f}x), torch gather {torch_gather_ms:.4f}, "
                  f"op {op_ms:.4f} ({row['dense_over_op']:.2f}x), error {err:.2e}{'' if ok else ' FAIL'}", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
