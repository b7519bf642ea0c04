"""GatedMLP on Triton: the fused gate-up GEMM (activation·multiply in its epilogue), then W_down.

`gated_mlp_triton` is the launcher on torch tensors (CUDA tensors on a GPU; CPU tensors with
TRITON_INTERPRET=1 set before triton is first imported). `gate_up_act` launches only the
fused first GEMM, writing H [M, h] (into `out` when given): the TensorRT plugin uses it on
the buffers TensorRT hands over. The down projection is a cuBLAS GEMM (torch.matmul).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from mlpdeploy.errors import OpError

from ..triton_common import interpreting, load_kernels, pow2
from .reference import ACTIVATIONS

__all__ = ["Config", "check_inputs", "default_config", "gate_up_act", "gated_mlp_triton", "interpreting"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Config:
    """Tile sizes and launch parameters of the fused gate-up kernel."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 3


@functools.cache
def _kernels():
    return load_kernels(__package__, "the GatedMLP Triton kernel")


def default_config(m: int, n: int, k: int) -> Config:
    """Tile sizes by token count: decode-sized M gets narrow M tiles and deep K tiles."""
    if interpreting():  # the interpreter runs programs one after another: few, large ones
        return Config(block_m=min(64, pow2(m, 16)), block_n=min(64, pow2(n, 16)), block_k=min(64, pow2(k, 16)))
    if m <= 16:
        return Config(block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4)
    if m <= 64:
        return Config(block_m=64, block_n=64, block_k=64, num_warps=4, num_stages=4)
    return Config(block_m=128, block_n=64, block_k=64, num_warps=8, num_stages=4)


def check_inputs(x, w_gate_up, w_down, b_gate_up, b_down, activation) -> None:
    """Raise a one-line ValueError when shapes, dtypes or the activation do not fit the op."""
    if activation not in ACTIVATIONS:
        raise OpError(f"unknown GatedMLP activation {activation!r}; available are {', '.join(ACTIVATIONS)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise OpError(f"GatedMLP Triton kernel supports {SUPPORTED_DTYPES}, got {x.dtype}")
    d, two_h = w_gate_up.shape
    if x.shape[-1] != d or two_h % 2 or (w_down is not None and w_down.shape[0] != two_h // 2):
        raise OpError(
            f"GatedMLP shapes do not agree: x {tuple(x.shape)}, w_gate_up {tuple(w_gate_up.shape)}, "
            f"w_down {None if w_down is None else tuple(w_down.shape)}"
        )
    if b_gate_up is not None and tuple(b_gate_up.shape) != (two_h,):
        raise OpError(f"b_gate_up must have shape ({two_h},), got {tuple(b_gate_up.shape)}")
    if b_down is not None and w_down is not None and tuple(b_down.shape) != (w_down.shape[1],):
        raise OpError(f"b_down must have shape ({w_down.shape[1]},), got {tuple(b_down.shape)}")


def gate_up_act(
    x2d: torch.Tensor,
    w_gate_up: torch.Tensor,
    b_gate_up: torch.Tensor | None = None,
    activation: str = "silu",
    *,
    out: torch.Tensor | None = None,
    config: Config | None = None,
) -> torch.Tensor:
    """H = act(x2d·W_gate + b_gate) ⊙ (x2d·W_up + b_up) in one kernel; x2d [M, d] → H [M, h]."""
    check_inputs(x2d, w_gate_up, None, b_gate_up, None, activation)
    kernels = _kernels()
    m, k = x2d.shape
    n = w_gate_up.shape[1] // 2
    if out is None:
        out = torch.empty((m, n), dtype=x2d.dtype, device=x2d.device)
    if m == 0 or n == 0:
        return out
    cfg = config or default_config(m, n, k)
    grid = (-(-m // cfg.block_m) * -(-n // cfg.block_n),)
    kernels.gate_up_act_kernel[grid](
        x2d, w_gate_up, b_gate_up if b_gate_up is not None else w_gate_up, out,
        m, n, k,
        x2d.stride(0), x2d.stride(1),
        w_gate_up.stride(0), w_gate_up.stride(1),
        out.stride(0), out.stride(1),
        ACTIVATION=activation,
        HAS_BIAS=b_gate_up is not None,
        # tl.dot on bf16 returns garbage in the interpreter; fp32 tiles there are exact.
        DOT_FP32=interpreting() and x2d.dtype == torch.bfloat16,
        # fp32 follows torch's matmul setting (exact fp32 unless TF32 is allowed); fp16/bf16
        # tiles take Triton's default, which only fp32 operands read.
        INPUT_PRECISION="ieee" if x2d.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32 else "tf32",
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def gated_mlp_triton(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    b_gate_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    activation: str = "silu",
    *,
    config: Config | None = None,
) -> torch.Tensor:
    """The GatedMLP op: fused Triton gate-up kernel, then H·W_down (+ b_down); x [..., d] → [..., d_out]."""
    check_inputs(x, w_gate_up, w_down, b_gate_up, b_down, activation)
    x2d = x.reshape(-1, x.shape[-1])
    h = gate_up_act(x2d, w_gate_up, b_gate_up, activation, config=config)
    y = torch.addmm(b_down, h, w_down) if b_down is not None else h @ w_down
    return y.reshape(*x.shape[:-1], w_down.shape[1])
