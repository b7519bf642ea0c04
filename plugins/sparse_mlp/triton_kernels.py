"""The SparseMLP Triton kernels: gather-GEMMs over the selected neurons (launch them through kernel.py).

`gather_up_kernel`: H[m, j] = f(X[m]·W_up[U[j]] + b_up[U[j]]) · S[m, j] for the union U (u entries):
one program owns a [BLOCK_M, BLOCK_N] tile of H, gathers BLOCK_N neuron rows of W_up (each a
contiguous row of d values) and streams d. f is the activation (topk mode) or the identity
(threshold mode, where S already holds the gate).
`gather_down_kernel`: Y[m, :] = Σ_j H[m, j]·W_downᵀ[U[j], :] + b_down: one program owns a
[BLOCK_M, BLOCK_N] tile of Y and streams the union, gathering BLOCK_K rows of W_downᵀ at a time.
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..gated_mlp.triton_kernels import _activate


@triton.jit
def gather_up_kernel(
    x_ptr, w_ptr, b_ptr, idx_ptr, s_ptr, h_ptr,
    M, U, K,
    stride_xm, stride_wn, stride_sm, stride_hm,
    ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < U
    rows = tl.load(idx_ptr + offs_n, mask=mask_n, other=0)  # the gathered neurons
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        mask_k = (k0 + offs_k) < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_ptr + rows[None, :] * stride_wn + (k0 + offs_k)[:, None], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(x.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
    acc += tl.load(b_ptr + rows, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    scale = tl.load(s_ptr + offs_m[:, None] * stride_sm + offs_n[None, :], mask=mask_m[:, None] & mask_n[None, :], other=0.0)
    h = _activate(acc, ACTIVATION) * scale.to(tl.float32)
    tl.store(h_ptr + offs_m[:, None] * stride_hm + offs_n[None, :], h.to(h_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def gather_down_kernel(
    h_ptr, w_ptr, b_ptr, idx_ptr, y_ptr,
    M, N, U,
    stride_hm, stride_wk, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, U, BLOCK_K):
        mask_k = (k0 + offs_k) < U
        rows = tl.load(idx_ptr + k0 + offs_k, mask=mask_k, other=0)
        h = tl.load(h_ptr + offs_m[:, None] * stride_hm + (k0 + offs_k)[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_ptr + rows[:, None] * stride_wk + offs_n[None, :], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(h.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
    acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
