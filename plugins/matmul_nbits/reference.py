"""MatMulInt4 / MatMulInt8 semantics as a torch function: the oracle the CPU kernel (ort_kernel.c) is tested against.

    y[m, n] = sum_j scale_a[m, j] * scale_b[n, j] * (sum_i a_q[m, j, i] * code[n, 32 j + i] - zero[n, j] * sum_i a_q[m, j, i])

B is in com.microsoft MatMulNBits' layout for `bits` 4 or 8, block 32: `packed` uint8
[N, KB, 32 * bits / 8] (KB = ceil(K / 32); column n's codes along K; 4-bit: two a byte, the first
in the low nibble), `scales` float32 [N, KB] (or flat), `zero_points` uint8 (4-bit:
[N, ceil(KB / 2)], two a byte, low nibble first; 8-bit: [N, KB]; absent: 2^(bits-1)). The
activations are quantized as MatMulNBits does at accuracy level 4: per row and block of 32
(zero-padded past K), scale_a = max|a| / 127 and a_q = round-half-even(a * (127 / max|a|)) in
float32 (a zero block: codes 0). The integer sums are exact; the reference adds the blocks in
float64, the kernel in float32 with one fused multiply-add a block, so they agree to a few
float32 ulps of the result's magnitude.
"""

from __future__ import annotations

import torch

BLOCK = 32


def unpack_codes(packed: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """uint8 [N, KB, 32 * bits / 8] → int64 codes [N, KB * 32] (4-bit: low nibble first)."""
    packed = packed.to(torch.int64)
    if bits == 8:
        return packed.reshape(packed.shape[0], -1)
    return torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def unpack_zero_points(zero_points: torch.Tensor | None, n: int, blocks: int, bits: int = 4) -> torch.Tensor:
    """float64 [N, KB] zero points (2^(bits-1) where there are none)."""
    if zero_points is None:
        return torch.full((n, blocks), float(1 << (bits - 1)), dtype=torch.float64)
    z = zero_points.to(torch.int64).reshape(n, -1)
    if bits == 4:
        z = torch.stack([z & 15, z >> 4], dim=-1).reshape(n, -1)
    return z[:, :blocks].to(torch.float64)


def quantize_rows(a: torch.Tensor, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [M, K] → (int64 codes [M, KB, 32], float32 scales [M, KB]), the kernel's rounding."""
    padded = torch.zeros(a.shape[0], blocks * BLOCK, dtype=torch.float32)
    padded[:, : a.shape[1]] = a.to(torch.float32)
    padded = padded.reshape(a.shape[0], blocks, BLOCK)
    amax = padded.abs().amax(dim=-1)
    inverse = torch.where(amax > 0, torch.tensor(127.0, dtype=torch.float32) / amax, torch.zeros_like(amax))
    codes = torch.round(padded * inverse[..., None]).to(torch.int64)
    return codes, amax / torch.tensor(127.0, dtype=torch.float32)


def matmul_nbits(a: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor | None = None,
                 bits: int = 4) -> torch.Tensor:
    """a [..., K] float32 × the `bits`-bit weight → [..., N] float32 (see the module docstring)."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, not {bits}")
    n, blocks = packed.shape[0], packed.shape[1]
    k = a.shape[-1]
    if not (blocks - 1) * BLOCK < k <= blocks * BLOCK:
        raise ValueError(f"A's last dim {k} does not match B's {blocks} blocks of {BLOCK}")
    rows = a.reshape(-1, k)
    codes_a, scale_a = quantize_rows(rows, blocks)                                  # [M, KB, 32], [M, KB]
    codes_b = unpack_codes(packed, bits).reshape(n, blocks, BLOCK)                  # [N, KB, 32]
    dots = torch.einsum("mji,nji->mnj", codes_a, codes_b).to(torch.float64)         # exact integer sums
    sums = codes_a.sum(dim=-1).to(torch.float64)                                    # [M, KB]
    zeros = unpack_zero_points(zero_points, n, blocks, bits)                        # [N, KB]
    t = dots - zeros[None] * sums[:, None, :]
    scale = (scales.reshape(n, blocks).to(torch.float32)[None] * scale_a[:, None, :]).to(torch.float64)  # float32 product, as the kernel
    y = (t * scale).sum(dim=-1).to(torch.float32)
    return y.reshape(*a.shape[:-1], n)
