"""GPU: SparseMLP's Triton gather-GEMM kernels vs the dense MLP as cuBLAS GEMMs, at several k/h.

    python bench/sparse_mlp_gpu.py --json PATH [--d 1024] [--h 4096] [--fractions 0.05,0.1,0.2,0.3] [--tokens 1,4,16]
    python bench/sparse_mlp_gpu.py --smoke        (tiny shapes in Triton's interpreter: plumbing only, numbers meaningless)

Per (tokens, k/h), medians from triton.testing.do_bench: `dense` = relu(x·W_upᵀ + b)·W_downᵀ + b
(two cuBLAS GEMMs, fp16), `gather` = kernel.sparse_mlp_triton in topk mode (torch selection:
predictor GEMMs + TopK + union, then the two gather-GEMM kernels). Each point checks the result
against the fp32 torch reference (exit 1 when off).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gpu_common import preflight, time_ms, write_json  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=1024)
    parser.add_argument("--h", type=int, default=4096)
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

    from mlpdeploy.plugins.sparse_mlp.kernel import sparse_mlp_triton
    from mlpdeploy.plugins.sparse_mlp.onnx_function import random_weights
    from mlpdeploy.plugins.sparse_mlp.reference import sparse_mlp_topk

    device, dtype = ("cpu", torch.float32) if args.smoke else ("cuda", torch.float16)
    d, h = (32, 64) if args.smoke else (args.d, args.h)
    w = {k: torch.from_numpy(v) for k, v in random_weights(d, h, d, mode="topk", rank=min(args.rank, d), seed=0).items()}
    wd = {k: v.to(device, dtype).contiguous() for k, v in w.items()}
    rows, failed = [], False
    for tokens in [int(t) for t in args.tokens.split(",")]:
        x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(tokens))
        xd = x.to(device, dtype)
        dense_ms = time_ms(args.smoke, lambda xd=xd: torch.relu(xd @ wd["w_up"].T + wd["b_up"]) @ wd["w_down_t"] + wd["b_down"])
        for fraction in [float(f) for f in args.fractions.split(",")]:
            k = max(1, round(fraction * h))
            kt = torch.tensor([k], device=device)
            inputs = [wd[n] for n in ("w_up", "b_up", "w_down_t", "b_down", "p_a", "p_b")] + [kt]
            got = sparse_mlp_triton(xd, *inputs, mode="topk", activation="relu").float().cpu()
            ref = sparse_mlp_topk(x, w["w_up"], w["b_up"], w["w_down_t"], w["b_down"], w["p_a"], w["p_b"], k)
            err = float((got - ref).abs().max()) / max(1.0, float(ref.abs().max()))
            ok = err <= (1e-4 if dtype == torch.float32 else 2e-2)  # fp16 selection may flip near-tied neurons
            failed |= not ok
            gather_ms = time_ms(args.smoke, lambda xd=xd, inputs=inputs: sparse_mlp_triton(xd, *inputs, mode="topk", activation="relu"))
            row = {"tokens": tokens, "fraction": fraction, "k": k, "dense_ms": dense_ms, "gather_ms": gather_ms,
                   "dense_over_gather": dense_ms / gather_ms, "max_error": err, "ok": ok}
            rows.append(row)
            print(f"tokens {tokens:3d} k/h {fraction:.2f}: dense {dense_ms:.4f} ms, gather {gather_ms:.4f} ms "
                  f"({row['dense_over_gather']:.2f}x), error {err:.2e}{'' if ok else ' FAIL'}", flush=True)
    if args.json:
        write_json(args.json, {"benchmark": "sparse_mlp_gpu", "smoke": args.smoke, "d": d, "h": h,
                               "device": torch.cuda.get_device_name() if device == "cuda" else "cpu (interpreter)", "rows": rows})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
