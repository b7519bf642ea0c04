"""The GroupRational Triton kernel (JIT code must live in a file; launch it through kernel.py).

`group_rational_kernel` reads x as [R, C] rows (R = every leading dim together) and writes y.
Program (r, g, c) owns a [BLOCK_R, BLOCK_C] tile of group g's channels: it loads the group's
m+1 numerator and n denominator coefficients once, as scalars (they stay in registers), then
evaluates P by Horner with FMA and Q as the form says, all in fp32, and stores P/Q in y's
dtype. One read and one write of x: the op is memory-bound, as FlashKAT observes.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def group_rational_kernel(
    x_ptr, num_ptr, den_ptr, y_ptr,
    R, C, PER_GROUP,
    stride_xr, stride_yr,
    stride_num_g,
    M: tl.constexpr,
    N: tl.constexpr,
    FORM_B: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_r = tl.program_id(0)
    g = tl.program_id(1)
    pid_c = tl.program_id(2)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    channel = g * PER_GROUP + cols
    mask = (rows < R)[:, None] & (cols < PER_GROUP)[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_xr + channel[None, :], mask=mask, other=0.0).to(tl.float32)

    num = num_ptr + g * stride_num_g  # stride 0 when every group shares one numerator
    den = den_ptr + g * N
    p = tl.zeros_like(x) + tl.load(num + M).to(tl.float32)
    for i in tl.static_range(M - 1, -1, -1):
        p = tl.fma(p, x, tl.load(num + i).to(tl.float32))
    if FORM_B:
        s = tl.zeros_like(x) + tl.load(den + N - 1).to(tl.float32)
        for i in tl.static_range(N - 2, -1, -1):
            s = tl.fma(s, x, tl.load(den + i).to(tl.float32))
        q = 1.0 + tl.abs(s * x)
    else:
        ax = tl.abs(x)
        s = tl.zeros_like(x) + tl.abs(tl.load(den + N - 1).to(tl.float32))
        for i in tl.static_range(N - 2, -1, -1):
            s = tl.fma(s, ax, tl.abs(tl.load(den + i).to(tl.float32)))
        q = tl.fma(s, ax, 1.0)
    y = p / q
    tl.store(y_ptr + rows[:, None] * stride_yr + channel[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
