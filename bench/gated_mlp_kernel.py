"""GPU: the fused GatedMLP Triton kernel vs torch (separate GEMMs + elementwise) vs one cuBLAS GEMM of equal FLOPs.

    python bench/gated_mlp_kernel.py --json PATH [--quick] [--dtypes fp16,bf16] [--tokens 1,16,128,2048]

Per (model shape, tokens, dtype), medians from triton.testing.do_bench (CUDA events):
  triton        gated_mlp_triton: fused gate-up kernel (act·mul in its epilogue) + cuBLAS down GEMM,
                default tile table
  triton_best   the same with the fastest of a small tile sweep (skipped with --quick)
  torch         F.linear(x, W_gate), F.linear(x, W_up), silu, mul, F.linear(h, W_down) — what an
                eager LLaMA MLP runs
  torch_concat  one F.linear on the concatenated [2h, d] weight, chunk, silu, mul, F.linear
  cublas        torch.mm(x, W[d, 3h]): one GEMM with the whole block's FLOPs, the ceiling
Ratios are speedups (other / triton): > 1 means the fused kernel is faster. Each point also
checks the Triton result against an fp32 torch reference; the script exits 1 if any is off.

`--smoke` runs tiny shapes on CPU through Triton's interpreter, timed with perf_counter — it
checks this script's plumbing only; its numbers mean nothing and are labelled so.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gpu_common import preflight, time_ms, write_json  # noqa: E402

MODELS = {  # name: (d, h)
    "llama2-7b": (4096, 11008),
    "llama-1b": (2048, 5632),
    "llama-small": (1024, 2816),
}
SMOKE_MODELS = {"smoke": (48, 40)}
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
TOLERANCE = {"float16": 1e-2, "bfloat16": 5e-2, "float32": 1e-4}  # max-abs error / max(1, max|ref|)

# (block_m, block_n, block_k, group_m, num_warps, num_stages): the sweep for `triton_best`.
SWEEP = [
    (16, 32, 128, 8, 4, 4),
    (16, 64, 128, 8, 4, 4),
    (16, 64, 256, 8, 4, 3),
    (16, 128, 64, 8, 4, 4),
    (32, 64, 128, 8, 4, 4),
    (64, 64, 64, 8, 4, 4),
    (64, 128, 64, 8, 8, 3),
    (128, 64, 64, 8, 8, 4),
    (128, 128, 64, 8, 8, 3),
    (128, 64, 32, 8, 4, 4),
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write results here (atomically)")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    p.add_argument("--tokens", default="1,16,128,2048")
    p.add_argument("--dtypes", default="fp16,bf16", help=f"comma list of {', '.join(DTYPES)}")
    p.add_argument("--quick", action="store_true", help="skip the tile sweep")
    p.add_argument("--smoke", action="store_true", help="CPU Triton interpreter, tiny shapes: plumbing check only")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    status = preflight("gated_mlp_kernel", args.smoke)
    if status is not None:
        return status
    import torch
    import triton

    bench = Bench(smoke=args.smoke)
    models = SMOKE_MODELS if args.smoke else {m: MODELS[m] for m in args.models.split(",")}
    tokens = [1, 5] if args.smoke else [int(t) for t in args.tokens.split(",")]
    dtypes = [DTYPES[d] for d in args.dtypes.split(",")]
    results, failures = [], []
    print(f"device: {bench.device_name}   torch {torch.__version__}   triton {triton.__version__}")
    print(f"{'model':<12} {'tok':>5} {'dtype':<8} {'triton':>9} {'best':>9} {'torch':>9} {'concat':>9} {'cublas':>9}"
          f"  {'vs torch':>8} {'vs cublas':>9}  {'TFLOP/s':>7} {'GB/s':>6}  err")
    for model, (d, h) in models.items():
        for dtype in dtypes:
            weights = bench.weights(d, h, dtype)
            for t in tokens:
                row = bench.point(model, d, h, t, dtype, weights, sweep=not (args.quick or args.smoke))
                results.append(row)
                if not row["ok"]:
                    failures.append(f"{model}/{t}/{dtype}: error {row['max_err']:.3g}")
                print(format_row(row), flush=True)
            del weights
            bench.empty_cache()
    data = {
        "benchmark": "gated_mlp_kernel",
        "smoke": args.smoke,
        "device": bench.device_name,
        "machine": bench.machine(),
        "activation": "silu",
        "timing": "perf_counter median (interpreter)" if args.smoke else "triton.testing.do_bench median, ms",
        "results": results,
        "failures": failures,
    }
    if args.json:
        write_json(args.json, data)
        print(f"wrote {args.json}")
    if failures:
        print("numerics failures: " + "; ".join(failures))
        return 1
    return 0


class Bench:
    def __init__(self, smoke: bool):
        import torch

        self.torch = torch
        self.smoke = smoke
        self.device = "cpu" if smoke else "cuda"
        self.device_name = "cpu (Triton interpreter, --smoke)" if smoke else torch.cuda.get_device_name()

    def machine(self) -> dict:
        import torch
        import triton

        info = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__}
        if not self.smoke:
            props = torch.cuda.get_device_properties(0)
            info.update(gpu=props.name, sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                        cuda=torch.version.cuda, capability=".".join(map(str, torch.cuda.get_device_capability())))
        return info

    def empty_cache(self):
        if not self.smoke:
            self.torch.cuda.empty_cache()

    def weights(self, d: int, h: int, dtype: str) -> dict:
        torch = self.torch
        g = torch.Generator(device=self.device).manual_seed(0)
        dt = getattr(torch, dtype)

        def randn(*shape, scale):
            return (torch.randn(*shape, generator=g, device=self.device, dtype=torch.float32) * scale).to(dt)

        w_gate_up = randn(d, 2 * h, scale=d**-0.5)  # the op's layout: [d, 2h], gate half first
        w_down = randn(h, d, scale=h**-0.5)
        return {
            "w_gate_up": w_gate_up,
            "w_down": w_down,
            # torch's nn.Linear layout [out, in], as an eager model holds them
            "gate_t": w_gate_up[:, :h].t().contiguous(),
            "up_t": w_gate_up[:, h:].t().contiguous(),
            "gate_up_t": w_gate_up.t().contiguous(),
            "down_t": w_down.t().contiguous(),
            "w_flops": randn(d, 3 * h, scale=d**-0.5),  # [T,d]·[d,3h] = the block's 6·T·d·h FLOPs
        }

    def time_ms(self, fn) -> float:
        return time_ms(self.smoke, fn)

    def point(self, model, d, h, tokens, dtype, w, sweep: bool) -> dict:
        torch = self.torch
        import torch.nn.functional as F

        from mlpdeploy.plugins.gated_mlp.kernel import Config, default_config, gated_mlp_triton
        from mlpdeploy.plugins.gated_mlp.reference import gated_mlp

        x = (torch.randn(tokens, d, device=self.device, generator=torch.Generator(device=self.device).manual_seed(1))).to(
            getattr(torch, dtype)
        )
        y = gated_mlp_triton(x, w["w_gate_up"], w["w_down"], activation="silu")
        ref = gated_mlp(x.float(), w["w_gate_up"].float(), w["w_down"].float(), activation="silu")
        scale = max(1.0, ref.abs().max().item())
        max_err = (y.float() - ref).abs().max().item() / scale

        def torch_mlp():
            return F.linear(F.silu(F.linear(x, w["gate_t"])) * F.linear(x, w["up_t"]), w["down_t"])

        def torch_concat():
            gate, up = F.linear(x, w["gate_up_t"]).chunk(2, dim=-1)
            return F.linear(F.silu(gate) * up, w["down_t"])

        ms = {
            "triton": self.time_ms(lambda: gated_mlp_triton(x, w["w_gate_up"], w["w_down"], activation="silu")),
            "torch": self.time_ms(torch_mlp),
            "torch_concat": self.time_ms(torch_concat),
            "cublas": self.time_ms(lambda: torch.mm(x, w["w_flops"])),
        }
        best_config = None
        if sweep:
            ms["triton_best"], best_config = ms["triton"], "default"
            for blocks in SWEEP:
                cfg = Config(*blocks)
                try:
                    t = self.time_ms(lambda cfg=cfg: gated_mlp_triton(x, w["w_gate_up"], w["w_down"], activation="silu", config=cfg))
                except Exception as exc:  # a tile that does not fit this GPU (shared memory, registers)
                    print(f"   skip tile {blocks}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
                    continue
                if t < ms["triton_best"]:
                    ms["triton_best"], best_config = t, blocks
        flops = 6.0 * tokens * d * h
        weight_bytes = 3 * d * h * x.element_size()
        fused = min(ms["triton"], ms.get("triton_best", ms["triton"]))
        return {
            "model": model, "d": d, "h": h, "tokens": tokens, "dtype": dtype,
            "ms": {k: round(v, 5) for k, v in ms.items()},
            "speedup_vs_torch": round(ms["torch"] / fused, 3),
            "speedup_vs_torch_concat": round(ms["torch_concat"] / fused, 3),
            "fraction_of_cublas": round(ms["cublas"] / fused, 3),
            "tflops": round(flops / fused / 1e9, 2),
            "weight_gbps": round(weight_bytes / fused / 1e6, 1),
            "default_config": list(default_config(tokens, h, d).__dict__.values()),
            "best_config": best_config,
            "max_err": max_err,
            "ok": bool(max_err <= TOLERANCE[dtype]),
        }


def format_row(r: dict) -> str:
    ms = r["ms"]
    best = f"{ms['triton_best']:9.4f}" if "triton_best" in ms else f"{'-':>9}"
    return (
        f"{r['model']:<12} {r['tokens']:>5} {r['dtype']:<8} {ms['triton']:9.4f} {best} {ms['torch']:9.4f} "
        f"{ms['torch_concat']:9.4f} {ms['cublas']:9.4f}  {r['speedup_vs_torch']:7.2f}x {r['fraction_of_cublas']:8.2f}x"
        f"  {r['tflops']:7.1f} {r['weight_gbps']:6.0f}  {r['max_err']:.1e}{'' if r['ok'] else ' FAIL'}"
    )


if __name__ == "__main__":
    sys.exit(main())
