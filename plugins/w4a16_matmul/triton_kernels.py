"""The W4A16MatMul Triton kernel (JIT code must live in a file; launch it through kernel.py).

`w4a16_matmul_kernel` computes Y [M, N] = X [M, K] · W for W stored as 4-bit codes in the
MatMulNBits layout (packed [N, KB, BLOCK/2], scales [N, KB]). One program owns a [BLOCK_M,
BLOCK_N] tile of Y and walks K one quantization block at a time: it loads BLOCK_N × BLOCK/2
bytes, splits the nibbles, decodes them (E2M1 / INT4 / UINT4 − zero point) and multiplies by
the block's scale (E4M3 · global, E8M0, or float32) in registers, then feeds the tile to
`tl.dot`. The float weight never reaches memory: HBM traffic is the 4-bit codes plus scales.

Decoding builds float32 bit patterns (exponent fields) instead of calling exp2, so every
decoded value — E8M0's 2^-127 included — is exact on any GPU (no flush-to-zero).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _pow2(e):
    """2^e as float32 for integer e in [-149, 127], exact (normal and subnormal bit patterns)."""
    normal = ((e + 127).to(tl.int32) << 23).to(tl.float32, bitcast=True)
    sub = (tl.full(e.shape, 1, tl.int32) << tl.maximum(e + 149, 0).to(tl.int32)).to(tl.float32, bitcast=True)
    return tl.where(e >= -126, normal, sub)


@triton.jit
def _e2m1(c):
    """E2M1 codes (int32 0..15) → float32."""
    exponent = (c >> 1) & 3
    mantissa = (c & 1).to(tl.float32)
    magnitude = tl.where(exponent == 0, mantissa * 0.5, (1.0 + mantissa * 0.5) * _pow2(exponent - 1))
    return tl.where((c & 8) != 0, -magnitude, magnitude)


@triton.jit
def _e4m3(c):
    """FP8 E4M3FN codes (int32 0..255) → float32 (NaN codes are never written by mlpdeploy)."""
    exponent = (c >> 3) & 15
    mantissa = (c & 7).to(tl.float32)
    magnitude = tl.where(exponent == 0, mantissa * 0.125 * 0.015625, (1.0 + mantissa * 0.125) * _pow2(exponent - 7))
    return tl.where((c & 128) != 0, -magnitude, magnitude)


@triton.jit
def w4a16_matmul_kernel(
    x_ptr, p_ptr, s_ptr, e_ptr, y_ptr,
    M, N, K, KB,
    stride_xm, stride_ym,
    FORMAT: tl.constexpr,  # 0 nvfp4, 1 mxfp4, 2 int4, 3 int4asym
    BLOCK: tl.constexpr,
    DOT_FP32: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK)
    mask_m = offs_m < M
    mask_n = offs_n < N
    if FORMAT == 0:
        global_scale = tl.load(e_ptr).to(tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kb in range(0, KB):
        k0 = kb * BLOCK
        mask_k = (k0 + offs_k) < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        # Each byte is loaded for both of its k (the second load hits cache): no join/reshape of
        # register tiles, whose layout conversion fed wrong values to fp16 tensor-core dots on H200.
        blob = tl.load(p_ptr + (offs_n[:, None] * KB + kb) * (BLOCK // 2) + (offs_k // 2)[None, :], mask=mask_n[:, None], other=0).to(tl.int32)
        codes = (blob >> ((offs_k % 2) * 4)[None, :]) & 15  # low nibble first
        scale_code = tl.load(s_ptr + offs_n * KB + kb, mask=mask_n, other=0)
        if FORMAT == 0:
            w = _e2m1(codes) * (_e4m3(scale_code.to(tl.int32)) * global_scale)[:, None]
        elif FORMAT == 1:
            w = _e2m1(codes) * _pow2(scale_code.to(tl.int32) - 127)[:, None]
        elif FORMAT == 2:
            w = (codes - ((codes & 8) << 1)).to(tl.float32) * scale_code.to(tl.float32)[:, None]
        else:
            zero = tl.load(e_ptr + offs_n * KB + kb, mask=mask_n, other=0).to(tl.int32)
            w = (codes - zero[:, None]).to(tl.float32) * scale_code.to(tl.float32)[:, None]
        if DOT_FP32:
            acc = tl.dot(x.to(tl.float32), tl.trans(w), acc, input_precision=INPUT_PRECISION)
        else:
            acc = tl.dot(x, tl.trans(w).to(x.dtype), acc)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])
