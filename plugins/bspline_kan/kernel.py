"""BSplineKAN on Triton: one fused pass (bases computed in registers, never stored), cubic splines.

`bspline_kan_triton` is the launcher on torch tensors (CUDA tensors on a GPU; CPU tensors with
TRITON_INTERPRET=1 set before triton is first imported); `out=` writes into a given buffer
(the TensorRT plugin's output).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from mlpdeploy.errors import OpError

from ..triton_common import interpreting, load_kernels, pow2
from .reference import check_shapes

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
KERNEL_ORDER = 3  # the kernel unrolls the cubic Cox–de Boor triangle


@dataclass(frozen=True)
class Config:
    block_m: int
    block_o: int
    block_i: int
    num_warps: int = 4


@functools.cache
def _kernels():
    return load_kernels(__package__, "the BSplineKAN Triton kernel")


def default_config(m: int, i: int, o: int) -> Config:
    if interpreting():
        return Config(min(64, pow2(m, 16)), min(64, pow2(o, 16)), min(64, pow2(i, 16)))
    return Config(32 if m <= 32 else 64, 64, 32, num_warps=4)


def check_inputs(x, grid, base_weight, spline_weight) -> tuple[int, int, int, int]:
    """(I, O, bases, K), or a one-line OpError when the kernel cannot take these tensors."""
    shapes = check_shapes(tuple(x.shape), tuple(grid.shape), tuple(base_weight.shape), tuple(spline_weight.shape))
    if shapes[3] != KERNEL_ORDER:
        raise OpError(f"the BSplineKAN Triton kernel computes cubic splines (order {KERNEL_ORDER}); this layer has order {shapes[3]}")
    for t in (x, grid, base_weight, spline_weight):
        if t.dtype not in SUPPORTED_DTYPES:
            raise OpError(f"BSplineKAN Triton kernel supports {SUPPORTED_DTYPES}, got {t.dtype}")
    return shapes


def bspline_kan_triton(x, grid, base_weight, spline_weight, *, out: torch.Tensor | None = None, config: Config | None = None) -> torch.Tensor:
    """The BSplineKAN op on torch tensors: x [..., I] → [..., O] in x's dtype."""
    i, o, bases, _ = check_inputs(x, grid, base_weight, spline_weight)
    x2d = x.reshape(-1, i)
    if x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    grid, base_weight, spline_weight = grid.contiguous(), base_weight.contiguous(), spline_weight.contiguous()
    if out is None:
        out = torch.empty((*x.shape[:-1], o), dtype=x.dtype, device=x.device)
    y2d = out.view(-1, o)
    m = x2d.shape[0]
    if m == 0 or o == 0:
        return out
    cfg = config or default_config(m, i, o)
    grid_dims = (-(-m // cfg.block_m), -(-o // cfg.block_o))
    _kernels().bspline_kan_kernel[grid_dims](
        x2d, grid, base_weight, spline_weight, y2d,
        m, i, o,
        x2d.stride(0), grid.stride(0), base_weight.stride(0), spline_weight.stride(0), y2d.stride(0),
        NB=bases, BLOCK_M=cfg.block_m, BLOCK_O=cfg.block_o, BLOCK_I=cfg.block_i,
        LOW_PRECISION_DOT=not interpreting() and x.dtype != torch.float32,
        num_warps=cfg.num_warps,
    )
    return out
