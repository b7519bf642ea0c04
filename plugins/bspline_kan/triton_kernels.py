"""The BSplineKAN Triton kernel (JIT code must live in a file; launch it through kernel.py).

`bspline_kan_kernel` computes Y [M, O] = SiLU(X)·W_base + B(X)·W_spline for X [M, I] in one
pass over I: program (m, o) owns a [BLOCK_M, BLOCK_O] tile of Y; for each block of BLOCK_I
input features it loads X once, feeds SiLU(X) to one tl.dot with W_base's rows, and for each
of the NB = G+3 cubic bases computes B_j(X) in registers (the local Cox–de Boor triangle on
the feature's knots t_j..t_{j+4}) and feeds it to a tl.dot with W_spline's rows i·NB + j. The
[M, I·NB] basis matrix never reaches memory. fp32 accumulation; cubic splines only.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _ramp(x, lo, hi):
    """(x − lo)/(hi − lo): one Cox–de Boor weight."""
    return (x - lo) / (hi - lo)


@triton.jit
def _cubic_basis(x, t0, t1, t2, t3, t4):
    """B_{j,3}(x) from its five knots t_j..t_{j+4}, by the Cox–de Boor recursion (as reference.py)."""
    n0a = ((x >= t0) & (x < t1)).to(tl.float32)
    n0b = ((x >= t1) & (x < t2)).to(tl.float32)
    n0c = ((x >= t2) & (x < t3)).to(tl.float32)
    n0d = ((x >= t3) & (x < t4)).to(tl.float32)
    n1a = _ramp(x, t0, t1) * n0a + _ramp(x, t2, t1) * n0b
    n1b = _ramp(x, t1, t2) * n0b + _ramp(x, t3, t2) * n0c
    n1c = _ramp(x, t2, t3) * n0c + _ramp(x, t4, t3) * n0d
    n2a = _ramp(x, t0, t2) * n1a + _ramp(x, t3, t1) * n1b
    n2b = _ramp(x, t1, t3) * n1b + _ramp(x, t4, t2) * n1c
    return _ramp(x, t0, t3) * n2a + _ramp(x, t4, t1) * n2b


@triton.jit
def bspline_kan_kernel(
    x_ptr, grid_ptr, wb_ptr, ws_ptr, y_ptr,
    M, N_IN, N_OUT,
    stride_xm, stride_grid, stride_wb, stride_ws, stride_ym,
    NB: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_I: tl.constexpr,
    LOW_PRECISION_DOT: tl.constexpr,  # fp16/bf16 x on a GPU: tensor-core dots in x's dtype, fp32 accumulation
):
    pid_m = tl.program_id(0)
    pid_o = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_o = pid_o * BLOCK_O + tl.arange(0, BLOCK_O)
    mask_m = offs_m < M
    mask_o = offs_o < N_OUT
    acc = tl.zeros((BLOCK_M, BLOCK_O), dtype=tl.float32)
    for i0 in range(0, N_IN, BLOCK_I):
        offs_i = i0 + tl.arange(0, BLOCK_I)
        mask_i = offs_i < N_IN
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_i[None, :], mask=mask_m[:, None] & mask_i[None, :], other=0.0).to(tl.float32)
        w_mask = mask_i[:, None] & mask_o[None, :]
        wb = tl.load(wb_ptr + offs_i[:, None] * stride_wb + offs_o[None, :], mask=w_mask, other=0.0).to(tl.float32)
        silu = x / (1.0 + tl.exp(-x))
        silu = tl.where(mask_i[None, :], silu, 0.0)
        if LOW_PRECISION_DOT:
            acc = tl.dot(silu.to(x_ptr.dtype.element_ty), wb.to(x_ptr.dtype.element_ty), acc)
        else:
            acc = tl.dot(silu, wb, acc, input_precision="ieee")
        knots = grid_ptr + offs_i * stride_grid
        for j in tl.static_range(NB):
            t0 = tl.load(knots + j, mask=mask_i, other=0.0)[None, :]
            t1 = tl.load(knots + j + 1, mask=mask_i, other=1.0)[None, :]
            t2 = tl.load(knots + j + 2, mask=mask_i, other=2.0)[None, :]
            t3 = tl.load(knots + j + 3, mask=mask_i, other=3.0)[None, :]
            t4 = tl.load(knots + j + 4, mask=mask_i, other=4.0)[None, :]
            basis = _cubic_basis(x, t0.to(tl.float32), t1.to(tl.float32), t2.to(tl.float32), t3.to(tl.float32), t4.to(tl.float32))
            basis = tl.where(mask_i[None, :], basis, 0.0)
            ws = tl.load(ws_ptr + (offs_i[:, None] * NB + j) * stride_ws + offs_o[None, :], mask=w_mask, other=0.0).to(tl.float32)
            if LOW_PRECISION_DOT:
                acc = tl.dot(basis.to(x_ptr.dtype.element_ty), ws.to(x_ptr.dtype.element_ty), acc)
            else:
                acc = tl.dot(basis, ws, acc, input_precision="ieee")
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_o[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_o[None, :])
