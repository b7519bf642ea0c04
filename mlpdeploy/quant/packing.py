"""4-bit codes two to a byte, and blocks along the input dimension.

Packing is ONNX's: the tensor is read in row-major order and element i goes to byte i // 2,
in the low nibble when i is even (the first element of each pair in the low nibble); an odd
count leaves the last high nibble 0. `MatMulNBits` packs each (column, block) the same way.

Blocks run along axis 0 of a [K, N] weight (the input dimension of `x @ W`). When K is not a
multiple of the block, the last block is padded with zeros to full length: zeros never raise
a block's largest magnitude (nor, for the asymmetric format, its range, which always holds
zero), so the padding does not change any scale, and padded positions hold the code of zero.
`unpad` drops them again.
"""

from __future__ import annotations

import numpy as np

from mlpdeploy.quant.grid import QuantError


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """4-bit codes (any shape, values < 16) → uint8 [ceil(n / 2)], low nibble first."""
    flat = np.asarray(codes, np.uint8).reshape(-1)
    if flat.size and flat.max() > 0xF:
        raise QuantError(f"a 4-bit code must be below 16, got {int(flat.max())}")
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """uint8 bytes → the first `count` 4-bit codes (uint8), low nibble first."""
    packed = np.asarray(packed, np.uint8).reshape(-1)
    if 2 * packed.size < count:
        raise QuantError(f"{packed.size} packed bytes hold {2 * packed.size} codes, fewer than the {count} asked for")
    pairs = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(-1)
    return pairs[:count]


def padded_rows(k: int, block: int) -> int:
    """K rounded up to a whole number of blocks."""
    return -(-k // block) * block


def pad_rows(w: np.ndarray, block: int) -> np.ndarray:
    """[K, N] → [Kp, N] with zero rows appended so that Kp is a multiple of `block`."""
    extra = padded_rows(w.shape[0], block) - w.shape[0]
    return np.concatenate([w, np.zeros((extra, w.shape[1]), w.dtype)]) if extra else w


def as_blocks(w: np.ndarray, block: int) -> np.ndarray:
    """[Kp, N] → [Kp / block, block, N] (a view; Kp a multiple of `block`)."""
    return w.reshape(w.shape[0] // block, block, w.shape[1])


def column_blobs(codes: np.ndarray, block: int) -> np.ndarray:
    """[Kp, N] 4-bit codes → uint8 [N, Kp / block, block / 2]: each column's blocks packed, as
    `com.microsoft::MatMulNBits` (bits 4) reads its B input."""
    n = codes.shape[1]
    per_column = np.ascontiguousarray(codes.T)  # [N, Kp]
    return pack_nibbles(per_column).reshape(n, codes.shape[0] // block, block // 2)


def column_nibbles(values: np.ndarray) -> np.ndarray:
    """[B, N] 4-bit codes (e.g. zero points per block) → uint8 [N, ceil(B / 2)], each column packed."""
    per_column = np.ascontiguousarray(np.asarray(values, np.uint8).T)
    if per_column.shape[1] % 2:
        per_column = np.concatenate([per_column, np.zeros((per_column.shape[0], 1), np.uint8)], axis=1)
    return pack_nibbles(per_column).reshape(per_column.shape[0], per_column.shape[1] // 2)
