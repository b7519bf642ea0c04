"""GPU: the W4A16MatMul Triton kernel (4-bit weights decoded inside the GEMM) vs torch's dequantize-then-matmul.

    python bench/w4a16_kernel.py --json PATH [--formats nvfp4,mxfp4,int4] [--rows 1,4,16] [--dtype fp16]

Per (weight shape, format, rows = batch), medians from triton.testing.do_bench (CUDA events):
  triton        w4a16_matmul_triton: reads the packed codes and scales, decodes in registers
  dequant+mm    torch: the op's reference decode to a dense weight, then x @ W (what a
                framework without a fused kernel runs every call)
  dense         torch x @ W with W already dense in the activation dtype (cuBLAS; 4× the bytes)
Achieved bandwidth = bytes the kernel must read and write (packed codes + scales + x + y) /
its time; the decode-sized GEMMs (rows ≤ 16) are bound by those bytes. Every point checks
the kernel against the float32 reference; the script exits 1 if any is off.

`--smoke` runs tiny shapes on CPU through Triton's interpreter (plumbing check; numbers mean nothing).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from gpu_common import preflight, time_ms, write_json  # noqa: E402

SHAPES = {  # name: (K, N) of x [rows, K] · W [K, N]
    "llama2-7b up": (4096, 11008),
    "llama2-7b down": (11008, 4096),
    "llama-1b up": (2048, 5632),
    "anchor down": (2816, 1024),
}
SMOKE_SHAPES = {"smoke": (96, 40)}
BLOCK = {"nvfp4": 16, "mxfp4": 32, "int4": 32}
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
TOLERANCE = {"float16": 2e-2, "bfloat16": 5e-2, "float32": 1e-4}  # max-abs error / max(1, max|ref|)


def weights(fmt: str, k: int, n: int, device, seed: int = 0):
    """Random packed codes and valid scales in the op's layout (packed [N, KB, block/2] uint8)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    block = BLOCK[fmt]
    kb = -(-k // block)
    packed = torch.randint(0, 256, (n, kb, block // 2), dtype=torch.uint8, generator=g)
    if fmt == "nvfp4":
        scales = torch.randint(0x20, 0x50, (n, kb), dtype=torch.uint8, generator=g)  # E4M3 codes 2^-4..2^2, no NaN
        extra = torch.tensor([0.01], dtype=torch.float32)
    elif fmt == "mxfp4":
        scales = torch.randint(120, 128, (n, kb), dtype=torch.uint8, generator=g)  # E8M0: 2^-7..2^0
        extra = None
    else:
        scales = torch.rand((n, kb), generator=g) * 0.02 + 0.001
        extra = None
    return [t.to(device) if t is not None else None for t in (packed, scales, extra)]


def timings(smoke: bool, x, y, storage, fmt: str, k: int, dense) -> tuple[float, float, float]:
    """ms of (the Triton kernel, torch decode then matmul, the dense matmul) for x [rows, K]."""
    from mlpdeploy.plugins.w4a16_matmul.kernel import w4a16_matmul_triton
    from mlpdeploy.plugins.w4a16_matmul.reference import dequantize

    packed, scales, extra = storage
    kw = {"global_scale": extra} if fmt == "nvfp4" else {}
    return (time_ms(smoke, lambda: w4a16_matmul_triton(x, packed, scales, extra, fmt, out=y)),
            time_ms(smoke, lambda: x @ dequantize(packed, scales, fmt, k, **kw).to(x.dtype)),
            time_ms(smoke, lambda: x @ dense))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, help="write results here (atomically)")
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--formats", default="nvfp4,mxfp4,int4")
    p.add_argument("--rows", default="1,4,16")
    p.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    p.add_argument("--smoke", action="store_true", help="CPU Triton interpreter, tiny shapes: plumbing check only")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    status = preflight("w4a16_kernel", args.smoke)
    if status is not None:
        return status
    import torch
    import triton

    from mlpdeploy.plugins.w4a16_matmul.kernel import w4a16_matmul_triton
    from mlpdeploy.plugins.w4a16_matmul.reference import dequantize, w4a16_matmul

    device = "cpu" if args.smoke else "cuda"
    dtype = getattr(torch, DTYPES["fp32" if args.smoke else args.dtype])
    shapes = SMOKE_SHAPES if args.smoke else {s: SHAPES[s] for s in args.shapes.split(",")}
    rows_list = [1, 5] if args.smoke else [int(r) for r in args.rows.split(",")]
    name = "cpu (Triton interpreter)" if args.smoke else torch.cuda.get_device_name()
    print(f"device: {name}   torch {torch.__version__}   triton {triton.__version__}   activations {dtype}")
    print(f"{'shape':<16}{'fmt':<7}{'rows':>5}{'triton ms':>11}{'deq+mm ms':>11}{'dense ms':>10}{'vs deq+mm':>10}{'vs dense':>9}"
          f"{'GB/s':>8}  err")
    results, failures = [], []
    for shape, (k, n) in shapes.items():
        for fmt in args.formats.split(","):
            packed, scales, extra = weights(fmt, k, n, device)
            kw = {"global_scale": extra} if fmt == "nvfp4" else {}
            dense = dequantize(packed, scales, fmt, k, **kw).to(dtype)
            for rows in rows_list:
                x = torch.randn(rows, k, device=device, dtype=dtype)
                y = w4a16_matmul_triton(x, packed, scales, extra, fmt)
                ref = w4a16_matmul(x.float(), packed, scales, extra, fmt=fmt)
                err = float((y.float() - ref).abs().max()) / max(1.0, float(ref.abs().max()))
                ok = err <= TOLERANCE[str(dtype).split(".")[-1]]
                t_triton, t_deq, t_dense = timings(args.smoke, x, y, (packed, scales, extra), fmt, k, dense)
                moved = packed.numel() + scales.numel() * scales.element_size() + x.numel() * x.element_size() + y.numel() * y.element_size()
                gbs = moved / (t_triton * 1e-3) / 1e9
                row = {"shape": shape, "k": k, "n": n, "format": fmt, "rows": rows, "dtype": str(dtype), "triton_ms": t_triton,
                       "dequant_matmul_ms": t_deq, "dense_ms": t_dense, "bytes": moved, "achieved_gb_s": gbs, "max_error": err, "ok": ok}
                results.append(row)
                if not ok:
                    failures.append(row)
                print(f"{shape:<16}{fmt:<7}{rows:>5}{t_triton:11.4f}{t_deq:11.4f}{t_dense:10.4f}{t_deq / t_triton:9.2f}x"
                      f"{t_dense / t_triton:8.2f}x{gbs:8.1f}  {err:.1e}{'' if ok else ' FAIL'}")
    if args.smoke:
        print("smoke run: Triton interpreter on CPU, timings are meaningless")
    if args.json:
        write_json(args.json, {"device": name, "host": platform.node(), "smoke": args.smoke, "results": results})
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
