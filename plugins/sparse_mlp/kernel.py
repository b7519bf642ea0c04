"""SparseMLP on Triton: the selection (predictor scores + TopK, or the gate's threshold) and the batch
union in torch, then two gather-GEMM kernels over the union's neurons only (triton_kernels.py).

`sparse_mlp_triton(x, *inputs, mode=, activation=)` takes the node's inputs in order (CUDA tensors
on a GPU; CPU tensors with TRITON_INTERPRET=1 set before triton is first imported). Weight bytes
read: |U|·(d + d_out) of W_up/W_downᵀ (plus, in topk mode, the predictor; in threshold mode the
full gate) instead of h·(d + d_out): at batch 1 that is the whole gain of a bandwidth-bound GEMV.
"""

from __future__ import annotations

import functools

import torch

from mlpdeploy.errors import OpError

from ..triton_common import interpreting, load_kernels, pow2
from .reference import activate, threshold_mask, topk_mask, union

__all__ = ["gather_mlp_triton", "interpreting", "select", "sparse_mlp_triton"]


@functools.cache
def _kernels():
    return load_kernels(__package__, "the SparseMLP Triton kernels")


def select(x2, inputs, mode: str, activation: str):
    """(union U, S [M, |U|], the activation the up kernel applies, up weights, up bias, W_downᵀ, b_down)."""
    if mode == "topk":
        w_up, b_up, w_down_t, b_down, p_a, p_b, k = inputs
        mask = topk_mask(x2.float(), p_a.float(), p_b.float(), int(k.reshape(-1)[0]))
        u = union(mask)
        return u, mask[:, u].to(x2.dtype), activation, w_up, b_up, w_down_t, b_down
    if mode == "threshold":
        w_gate, b_gate, w_up, b_up, w_down_t, b_down, threshold = inputs
        gate = activate(x2 @ w_gate + b_gate, activation)
        mask = threshold_mask(gate, threshold)
        u = union(mask)
        return u, (gate * mask)[:, u].contiguous(), "none", w_up, b_up, w_down_t, b_down
    raise OpError(f"unknown SparseMLP mode {mode!r}; available are topk, threshold")


def sparse_mlp_triton(x: torch.Tensor, *inputs: torch.Tensor, mode: str = "topk", activation: str = "relu") -> torch.Tensor:
    """The SparseMLP op; x [..., d] → [..., d_out]."""
    if len(inputs) != 7:
        raise OpError(f"SparseMLP {mode} takes x and 7 inputs, got {len(inputs)}")
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    y = gather_mlp_triton(x2, *select(x2, inputs, mode, activation))
    return y.reshape(*x.shape[:-1], y.shape[-1])


def gather_mlp_triton(x2, u, scale, act, w_up, b_up, w_down_t, b_down) -> torch.Tensor:
    """The two gather-GEMM kernels for a given selection (`select`'s output): x2 [M, d] → [M, d_out]."""
    kernels = _kernels()
    w_up, w_down_t = w_up.contiguous(), w_down_t.contiguous()  # the kernels index rows with unit column stride
    m, d = x2.shape
    n_u, d_out = u.numel(), w_down_t.shape[1]
    u = u.to(torch.int64).contiguous()
    hidden = torch.empty((m, n_u), dtype=torch.float32, device=x2.device)
    y = torch.empty((m, d_out), dtype=x2.dtype, device=x2.device)
    bm = 16 if interpreting() or m <= 16 else 64
    bn, bk = (min(64, pow2(n_u, 16)), min(64, pow2(d, 16))) if interpreting() else (64, 128)
    kernels.gather_up_kernel[(-(-m // bm), -(-n_u // bn))](
        x2, w_up, b_up, u, scale, hidden, m, n_u, d, x2.stride(0), w_up.stride(0), scale.stride(0), hidden.stride(0),
        ACTIVATION=act, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    bn2, bk2 = (min(64, pow2(d_out, 16)), min(64, pow2(n_u, 16))) if interpreting() else (64, 64)
    kernels.gather_down_kernel[(-(-m // bm), -(-d_out // bn2))](
        hidden, w_down_t, b_down, u, y, m, d_out, n_u, hidden.stride(0), w_down_t.stride(0), y.stride(0),
        BLOCK_M=bm, BLOCK_N=bn2, BLOCK_K=bk2)
    return y
