"""FANLayer on Triton: one launch computes both branches, cos/sin/activation in the epilogues.

`fan_layer_triton` is the launcher on torch tensors (CUDA tensors on a GPU; CPU tensors with
TRITON_INTERPRET=1 set before triton is first imported); `out=` writes into a given buffer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from mlpdeploy.errors import OpError

from ..triton_common import interpreting, load_kernels, pow2
from .reference import check_shapes

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4


@functools.cache
def _kernels():
    return load_kernels(__package__, "the FANLayer Triton kernel")


def default_config(m: int, n: int, k: int) -> Config:
    if interpreting():
        return Config(min(64, pow2(m, 16)), min(64, pow2(n, 16)), min(64, pow2(k, 16)))
    if m <= 16:
        return Config(16, 64, 128)
    return Config(64, 64, 64, num_warps=4)


def check_inputs(x, w_p, w_g, b_p, b_g, activation: str) -> tuple[int, int, int]:
    shapes = check_shapes(tuple(x.shape), tuple(w_p.shape), tuple(w_g.shape), tuple(b_p.shape), tuple(b_g.shape), activation)
    for t in (x, w_p, w_g, b_p, b_g):
        if t.dtype not in SUPPORTED_DTYPES:
            raise OpError(f"FANLayer Triton kernel supports {SUPPORTED_DTYPES}, got {t.dtype}")
    return shapes


def fan_layer_triton(x, w_p, w_g, b_p, b_g, activation: str = "gelu", *, out: torch.Tensor | None = None,
                     config: Config | None = None) -> torch.Tensor:
    """The FANLayer op on torch tensors: x [..., I] → [..., 2P + D] in x's dtype."""
    i, p, d = check_inputs(x, w_p, w_g, b_p, b_g, activation)
    x2d = x.reshape(-1, i)
    if x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    w_p, w_g, b_p, b_g = (t.contiguous() for t in (w_p, w_g, b_p, b_g))
    if out is None:
        out = torch.empty((*x.shape[:-1], 2 * p + d), dtype=x.dtype, device=x.device)
    y2d = out.view(-1, 2 * p + d)
    m = x2d.shape[0]
    if m == 0 or 2 * p + d == 0:
        return out
    cfg = config or default_config(m, max(p, d), i)
    grid = (-(-m // cfg.block_m), -(-p // cfg.block_n) + -(-d // cfg.block_n))
    _kernels().fan_layer_kernel[grid](
        x2d, w_p, w_g, b_p, b_g, y2d,
        m, i, p, d,
        x2d.stride(0), w_p.stride(0), w_g.stride(0), y2d.stride(0),
        ACTIVATION=activation,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps,
    )
    return out
