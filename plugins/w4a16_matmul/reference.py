"""W4A16MatMul semantics as a torch function: the oracle every other face is tested against.

    y = x @ W,  W[k, n] = value(code[n, k]) · scale(n, k // block)        (k < K)

Storage (the layout `com.microsoft::MatMulNBits` uses for B): `packed` uint8 [N, KB, block/2],
KB = ceil(K / block): column n's codes along K, two a byte, the first in the low nibble; the
last block is zero-padded past K. `scales` [N, KB]. Per format:

* `nvfp4`  codes E2M1; scales uint8 FP8 E4M3FN codes; `global_scale` float32 [1];
           scale = e4m3(s) · global_scale  (block 16)
* `mxfp4`  codes E2M1; scales uint8 E8M0 codes; scale = 2^(s − 127)  (block 32)
* `int4`   codes two's-complement INT4 (−8..7); scales float32 (blocks: mlpdeploy.contract.WEIGHT_BLOCKS)
* `int4asym` codes UINT4; scales float32; `zero_points` uint8 [N, KB]; value = code − zp

Every product is one float32 operation in that order (value · (e4m3 · global)), so W is
exactly what DequantizeLinear computes from the same codes. The matmul runs in float32 and the
result takes x's dtype ("W4A16": 4-bit weights, 16/32-bit activations).
"""

from __future__ import annotations

import torch

from mlpdeploy.contract import E2M1_VALUES, E4M3_VALUES, E8M0_VALUES, INT4_VALUES, WEIGHT_BLOCKS, WEIGHT_FORMATS
from mlpdeploy.errors import OpError

FORMATS: tuple[str, ...] = WEIGHT_FORMATS
BLOCKS = WEIGHT_BLOCKS
EXTRA_INPUT = {"nvfp4": "global_scale", "int4asym": "zero_points"}  # the fourth input, by format

E2M1 = tuple(float(v) for v in E2M1_VALUES)
INT4 = tuple(float(v) for v in INT4_VALUES)


def e4m3_table() -> torch.Tensor:
    """float32 value of every FP8 E4M3FN code (0x7F, 0xFF: NaN)."""
    return torch.from_numpy(E4M3_VALUES.copy())


def e8m0_table() -> torch.Tensor:
    """float32 2^(code − 127) for every E8M0 code (0xFF: NaN); exact, 2^-127 a denormal."""
    return torch.from_numpy(E8M0_VALUES.copy())


def check_format(fmt: str, block: int) -> None:
    if fmt not in FORMATS:
        raise OpError(f"unknown W4A16MatMul format {fmt!r}; formats are {', '.join(FORMATS)}")
    if block not in BLOCKS[fmt]:
        raise OpError(f"W4A16MatMul {fmt} takes block sizes {', '.join(map(str, BLOCKS[fmt]))}, not {block}")


def check_shapes(x_shape, packed_shape, scales_shape, fmt: str) -> tuple[int, int, int]:
    """(K, N, block) from the shapes, or a one-line error."""
    if len(packed_shape) != 3 or len(scales_shape) != 2:
        raise OpError(f"W4A16MatMul packed must be [N, KB, block/2] and scales [N, KB]; got {list(packed_shape)} and {list(scales_shape)}")
    n, kb, half = (int(d) for d in packed_shape)
    block = 2 * half
    check_format(fmt, block)
    k = x_shape[-1]
    if tuple(int(d) for d in scales_shape) != (n, kb) or (isinstance(k, int) and -(-k // block) != kb):
        raise OpError(
            f"W4A16MatMul shapes do not agree: x [..., {k}], packed {list(packed_shape)}, scales {list(scales_shape)} "
            f"(want KB = ceil(K / {block}) blocks per column and scales [N, KB])"
        )
    return k, n, block


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, KB, block/2] → int64 codes [N, KB, block], low nibble first."""
    p = packed.to(torch.int64)
    return torch.stack([p & 0xF, p >> 4], dim=-1).reshape(*packed.shape[:2], -1)


def dequantize(packed, scales, fmt: str, k: int, global_scale=None, zero_points=None) -> torch.Tensor:
    """W as float32 [K, N]."""
    codes = unpack_codes(packed)
    device = codes.device  # the lookup tables follow the codes (CUDA tensors in bench/w4a16_kernel.py)
    if fmt in ("nvfp4", "mxfp4"):
        values = torch.tensor(E2M1, device=device)[codes]
    elif fmt == "int4":
        values = torch.tensor(INT4, device=device)[codes]
    else:
        values = (codes - zero_points.to(torch.int64)[..., None]).float()
    if fmt == "nvfp4":
        scale = e4m3_table().to(device)[scales.to(torch.int64)] * global_scale.float().reshape(())
    elif fmt == "mxfp4":
        scale = e8m0_table().to(device)[scales.to(torch.int64)]
    else:
        scale = scales.float()
    w = (values * scale[..., None]).reshape(codes.shape[0], -1)[:, :k]
    return w.t()


def w4a16_matmul(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, extra: torch.Tensor | None = None,
                 fmt: str = "int4") -> torch.Tensor:
    """The op on torch tensors: x [..., K] → [..., N] in x's dtype. `extra` is the global scale
    (nvfp4) or the zero points (int4asym)."""
    k, _, _ = check_shapes(tuple(x.shape), tuple(packed.shape), tuple(scales.shape), fmt)
    if (extra is None) != (fmt not in EXTRA_INPUT):
        raise OpError(f"W4A16MatMul {fmt} takes {'a ' + EXTRA_INPUT[fmt] + ' input' if fmt in EXTRA_INPUT else 'no fourth input'}")
    w = dequantize(packed, scales, fmt, k, global_scale=extra if fmt == "nvfp4" else None,
                   zero_points=extra if fmt == "int4asym" else None)
    return (x.float() @ w.to(x.device)).to(x.dtype)
