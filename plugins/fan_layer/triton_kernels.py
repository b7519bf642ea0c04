"""The FANLayer Triton kernel (JIT code must live in a file; launch it through kernel.py).

`fan_layer_kernel` writes Y [M, 2P + D] = [cos(P), sin(P), act(G)] for P = X·W_p + b_p,
G = X·W_g + b_g. The column tiles of P come first (program ids 0..cdiv(P, BLOCK_N)−1), then
those of G: a P program streams K once and stores cos and sin of its tile at columns n and
P + n; a G program applies the activation in its epilogue and stores at 2P + n. P and G
never reach memory.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..gated_mlp.triton_kernels import _activate


@triton.jit
def fan_layer_kernel(
    x_ptr, wp_ptr, wg_ptr, bp_ptr, bg_ptr, y_ptr,
    M, K, P, D,
    stride_xm, stride_wp, stride_wg, stride_ym,
    ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    p_tiles = tl.cdiv(P, BLOCK_N)
    is_p = pid_n < p_tiles
    if is_p:
        n0 = pid_n * BLOCK_N
        width = P
        w_ptr = wp_ptr
        stride_w = stride_wp
        b_ptr = bp_ptr
    else:
        n0 = (pid_n - p_tiles) * BLOCK_N
        width = D
        w_ptr = wg_ptr
        stride_w = stride_wg
        b_ptr = bg_ptr
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < width
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = (k0 + offs_k) < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_ptr + (k0 + offs_k)[:, None] * stride_w + offs_n[None, :], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
    acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    rows = y_ptr + offs_m[:, None] * stride_ym
    if is_p:
        tl.store(rows + offs_n[None, :], tl.cos(acc).to(y_ptr.dtype.element_ty), mask=mask)
        tl.store(rows + (P + offs_n)[None, :], tl.sin(acc).to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(rows + (2 * P + offs_n)[None, :], _activate(acc, ACTIVATION).to(y_ptr.dtype.element_ty), mask=mask)
