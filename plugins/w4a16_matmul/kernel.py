"""W4A16MatMul on Triton: 4-bit weights decoded inside the GEMM (see triton_kernels.py).

`w4a16_matmul_triton` is the launcher on torch tensors (CUDA tensors on a GPU; CPU tensors with
TRITON_INTERPRET=1 set before triton is first imported); `out=` writes into a given buffer.
Sized for decode (M = batch 1..16 rows): one M tile of 16, N tiles of 64 (128 on big N).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from mlpdeploy.errors import OpError

from ..triton_common import interpreting, load_kernels, pow2
from .reference import EXTRA_INPUT, FORMATS, check_shapes

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FORMAT_IDS = {name: i for i, name in enumerate(FORMATS)}


@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 3


@functools.cache
def _kernels():
    return load_kernels(__package__, "the W4A16MatMul Triton kernel")


def default_config(m: int, n: int) -> Config:
    if interpreting():
        return Config(min(64, pow2(m, 16)), min(64, pow2(n, 16)))
    if m <= 16:
        return Config(16, 64 if n <= 4096 else 128, num_warps=4, num_stages=4)
    return Config(64, 64, num_warps=4, num_stages=3)


def w4a16_matmul_triton(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, extra: torch.Tensor | None = None,
                        fmt: str = "int4", *, out: torch.Tensor | None = None, config: Config | None = None) -> torch.Tensor:
    """The op on torch tensors: x [..., K] → [..., N] in x's dtype (see reference.py for the layout)."""
    k, n, block = check_shapes(tuple(x.shape), tuple(packed.shape), tuple(scales.shape), fmt)
    if x.dtype not in SUPPORTED_DTYPES:
        raise OpError(f"W4A16MatMul Triton kernel supports {SUPPORTED_DTYPES}, got {x.dtype}")
    if (extra is None) != (fmt not in EXTRA_INPUT):
        raise OpError(f"W4A16MatMul {fmt} takes {'a ' + EXTRA_INPUT[fmt] + ' input' if fmt in EXTRA_INPUT else 'no fourth input'}")
    x2d = x.reshape(-1, k)
    if x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    packed, scales = packed.contiguous(), scales.contiguous()
    extra = (extra if extra is not None else scales).contiguous()
    if out is None:
        out = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    y2d = out.view(-1, n)
    m = x2d.shape[0]
    if m == 0 or n == 0:
        return out
    cfg = config or default_config(m, n)
    dot_fp32 = interpreting() or x.dtype == torch.float32
    grid = (-(-m // cfg.block_m), -(-n // cfg.block_n))
    _kernels().w4a16_matmul_kernel[grid](
        x2d, packed, scales, extra, y2d,
        m, n, k, packed.shape[1],
        x2d.stride(0), y2d.stride(0),
        FORMAT=FORMAT_IDS[fmt], BLOCK=block, DOT_FP32=dot_fp32, INPUT_PRECISION="ieee",
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out
