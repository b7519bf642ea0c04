"""GroupRational on Triton: one elementwise pass, coefficients in registers, fp32 math.

`group_rational_triton` is the launcher on torch tensors (CUDA tensors on a GPU; CPU tensors
with TRITON_INTERPRET=1 set before triton is first imported). `out=` lets the TensorRT plugin
write into the buffer TensorRT hands over.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from mlpdeploy.errors import OpError

from ..triton_common import interpreting, load_kernels, pow2
from .reference import FORMS, check_shapes

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Config:
    """Tile of one program: BLOCK_R rows × BLOCK_C channels of one group."""

    block_r: int
    block_c: int
    num_warps: int = 4


@functools.cache
def _kernels():
    return load_kernels(__package__, "the GroupRational Triton kernel")


def default_config(rows: int, per_group: int) -> Config:
    """About 4096 elements per program (16 KB of fp32): enough bytes in flight, few registers."""
    block_c = min(pow2(per_group), 1024)
    block_r = max(1, min(pow2(rows), 4096 // block_c))
    if interpreting():  # programs run one after another in the interpreter: few, large ones
        block_r = max(1, min(pow2(rows), 16384 // block_c))
    return Config(block_r, block_c, num_warps=4 if block_r * block_c <= 4096 else 8)


def check_inputs(x, numerator, denominator, form: str) -> tuple[int, int, int]:
    """(groups, m, n), or a one-line OpError when shapes, dtypes or the form do not fit the kernel."""
    groups, m, n = check_shapes(tuple(x.shape), tuple(numerator.shape), tuple(denominator.shape), form)
    if x.dtype not in SUPPORTED_DTYPES:
        raise OpError(f"GroupRational Triton kernel supports {SUPPORTED_DTYPES}, got {x.dtype}")
    if numerator.dtype not in SUPPORTED_DTYPES or denominator.dtype not in SUPPORTED_DTYPES:
        raise OpError(f"GroupRational coefficients must be float32/float16/bfloat16, got {numerator.dtype}, {denominator.dtype}")
    return groups, m, n


def group_rational_triton(
    x: torch.Tensor,
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    form: str = "A",
    *,
    out: torch.Tensor | None = None,
    config: Config | None = None,
) -> torch.Tensor:
    """The GroupRational op on torch tensors: x [..., C], numerator [1|G, m+1], denominator [G, n] → [..., C]."""
    groups, m, n = check_inputs(x, numerator, denominator, form)
    channels = x.shape[-1]
    x2d = x.reshape(-1, channels)
    if x2d.stride(1) != 1:
        x2d = x2d.contiguous()
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    y2d = out.view(-1, channels)
    rows, per_group = x2d.shape[0], channels // groups
    if rows == 0 or channels == 0:
        return out
    numerator, denominator = numerator.contiguous(), denominator.contiguous()
    cfg = config or default_config(rows, per_group)
    grid = (-(-rows // cfg.block_r), groups, -(-per_group // cfg.block_c))
    _kernels().group_rational_kernel[grid](
        x2d, numerator, denominator, y2d,
        rows, channels, per_group,
        x2d.stride(0), y2d.stride(0),
        0 if numerator.shape[0] == 1 else numerator.stride(0),
        M=m, N=n, FORM_B=form == "B",
        BLOCK_R=cfg.block_r, BLOCK_C=cfg.block_c,
        num_warps=cfg.num_warps,
    )
    return out


__all__ = ["FORMS", "Config", "check_inputs", "default_config", "group_rational_triton"]
