"""The 4-bit weight formats: NVFP4, MXFP4, INT4 (symmetric) and INT4 with zero points.

A [K, N] weight (the `x @ W` orientation: K inputs, N outputs) is cut into blocks of `block`
rows along K, one block per column (padding rules in `packing`). Per format, exactly:

* **nvfp4** (block 16): per-tensor FP32 scale `s2 = amax / (6·448)` (amax = max |W|; 1 for an
  all-zero weight; at least the smallest normal float32), per-block FP8 E4M3 scale
  `sb = e4m3(block_amax / (6·s2))`, elements `e2m1(w / (sb·s2))`; value `e2m1 · (sb·s2)`.
* **mxfp4** (block 32, OCP MX v1.0): per-block E8M0 scale `2^e`, `e = floor(log2(block_amax)) − 2`
  (emax of E2M1), clamped to [−127, 127] (−127 for an all-zero block); elements `e2m1(w / 2^e)`,
  saturating at ±6 as the spec says; value `e2m1 · 2^e`.
* **int4** (block 16, 32, 64 or 128; default 32): per-block FP32 scale `block_amax / 7` (1 for a zero block),
  codes `clip(round(w / scale), −8, 7)`; value `code · scale`.
* **int4asym** (block 16, 32, 64 or 128; default 32): per-block range `[min(lo, 0), max(hi, 0)]`, FP32 scale
  `range / 15` (1 for a zero block), zero point `clip(round(−lo / scale), 0, 15)`, codes
  `clip(round(w / scale) + zp, 0, 15)`; value `(code − zp) · scale`.

Rounding is to nearest, ties to even; every division and product is one float32 operation,
in the order written (the order ONNX's DequantizeLinear/QuantizeLinear use), so the decoded
weight equals, bit for bit, what `DequantizeLinear` computes from the stored codes and scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlpdeploy.contract import DEFAULT_BLOCK, E2M1_MAX, E4M3_MAX, E8M0_BIAS, WEIGHT_BLOCKS
from mlpdeploy.quant.grid import QuantError, check_finite
from mlpdeploy.quant.minifloat import (
    decode_e2m1,
    decode_e4m3,
    decode_e8m0,
    encode_e2m1,
    encode_e4m3,
    floor_log2,
)
from mlpdeploy.quant.packing import as_blocks, pack_nibbles, pad_rows

F32 = np.float32
FP32_MIN_NORMAL = F32(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class Format:
    """A weight format and its block size; `str()` is its spec (`nvfp4`, `int4-64`)."""

    name: str  # nvfp4 | mxfp4 | int4 | int4asym
    block: int

    def __str__(self) -> str:
        return self.name if self.block == DEFAULT_BLOCK[self.name] else f"{self.name}-{self.block}"

    @property
    def fp4(self) -> bool:
        return self.name in ("nvfp4", "mxfp4")

    def bits_per_weight(self, k: int, n: int) -> float:
        """Stored bits per weight of a [K, N] weight (codes, scales, zero points, global scale)."""
        return 8.0 * storage_bytes(self, k, n) / (k * n)

    def quantize(self, w: np.ndarray, what: str = "weight") -> QuantizedWeight:
        """Quantize a [K, N] weight (float32) in this format."""
        return quantize(w, self, what)


@dataclass
class QuantizedWeight:
    """A quantized [K, N] weight: unpacked 4-bit `codes` [Kp, N] (Kp = K padded to whole
    blocks), per-block `scales` [Kp / block, N] (uint8 E4M3 codes for nvfp4, uint8 E8M0 codes
    for mxfp4, float32 for int4), `global_scale` (nvfp4) and `zero_points` (int4asym, uint8)."""

    format: Format
    k: int
    n: int
    codes: np.ndarray
    scales: np.ndarray
    global_scale: np.float32 | None = None
    zero_points: np.ndarray | None = None

    @property
    def block(self) -> int:
        return self.format.block

    def block_scales(self) -> np.ndarray:
        """The float32 scale each block's values are multiplied by ([Kp / block, N])."""
        name = self.format.name
        if name == "nvfp4":
            return (decode_e4m3(self.scales) * self.global_scale).astype(F32)
        if name == "mxfp4":
            return decode_e8m0(self.scales)
        return self.scales.astype(F32)

    def values(self) -> np.ndarray:
        """The codes as numbers before scaling ([Kp, N] float32): E2M1 values, signed INT4, or code − zero point."""
        name = self.format.name
        if name in ("nvfp4", "mxfp4"):
            return decode_e2m1(self.codes)
        if name == "int4":
            return signed_int4(self.codes).astype(F32)
        zp = np.repeat(self.zero_points.astype(np.int16), self.block, axis=0)
        return (self.codes.astype(np.int16) - zp).astype(F32)

    def dequantize(self) -> np.ndarray:
        """The weight the codes stand for, [K, N] float32 (value · block scale, one float32 product)."""
        scaled = as_blocks(self.values(), self.block) * self.block_scales()[:, None, :]
        return np.ascontiguousarray(scaled.reshape(-1, self.n)[: self.k]).astype(F32)

    def nbytes(self) -> int:
        """Bytes stored: packed codes, scales, packed zero points, the global scale."""
        return storage_bytes(self.format, self.k, self.n)

    def packed_codes(self) -> np.ndarray:
        """The [K, N] codes (padding dropped) packed two a byte in row-major order (ONNX's 4-bit layout)."""
        return pack_nibbles(self.codes[: self.k])


SCALE_BYTES = {"nvfp4": 1, "mxfp4": 1, "int4": 4, "int4asym": 4}


def storage_bytes(fmt: Format, k: int, n: int) -> int:
    blocks = -(-k // fmt.block) * n
    total = -(-k * n // 2) + blocks * SCALE_BYTES[fmt.name]
    if fmt.name == "int4asym":
        total += -(-blocks // 2)
    if fmt.name == "nvfp4":
        total += 4
    return total


def parse_format(spec: str) -> Format:
    """`nvfp4`, `mxfp4`, `int4`, `int4-64`, `int4asym-128`, ... → Format, or a one-line error."""
    text = spec.strip().lower()
    name, _, block_text = text.partition("-")
    if name not in DEFAULT_BLOCK:
        raise QuantError(f"unknown weight format {spec!r}; formats are {', '.join(DEFAULT_BLOCK)} (int4/int4asym take {', '.join(f'-{b}' for b in WEIGHT_BLOCKS['int4'])})")
    block = DEFAULT_BLOCK[name]
    if block_text:
        if not block_text.isdigit():
            raise QuantError(f"weight format {spec!r}: the block after '-' must be a number, e.g. int4-64")
        block = int(block_text)
    return make_format(name, block)


def make_format(name: str, block: int = 0) -> Format:
    """The Format `name` with `block` (0: its default), checked."""
    if name not in DEFAULT_BLOCK:
        raise QuantError(f"unknown weight format {name!r}; formats are {', '.join(DEFAULT_BLOCK)}")
    block = block or DEFAULT_BLOCK[name]
    if block not in WEIGHT_BLOCKS[name]:
        raise QuantError(f"{name} blocks are {' or '.join(map(str, WEIGHT_BLOCKS[name]))} along the input dim, not {block}")
    return Format(name, block)


def signed_int4(codes: np.ndarray) -> np.ndarray:
    """Two's-complement 4-bit codes → int8 in [−8, 7]."""
    codes = np.asarray(codes, np.int16) & 0xF
    return np.where(codes >= 8, codes - 16, codes).astype(np.int8)


def quantize(w: np.ndarray, fmt: Format, what: str = "weight") -> QuantizedWeight:
    """Quantize a [K, N] weight in `fmt` (see the module docstring for the exact rules)."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise QuantError(f"{what} has shape {list(w.shape)}; weight formats take a [K, N] matrix")
    if w.dtype.kind != "f":
        raise QuantError(f"{what} has dtype {w.dtype}; weight formats take floating-point weights")
    w = w.astype(F32)
    check_finite(w, what)
    k, n = w.shape
    blocks = as_blocks(pad_rows(w, fmt.block), fmt.block)  # [B, block, N]
    quantizer = {"nvfp4": _nvfp4, "mxfp4": _mxfp4, "int4": _int4, "int4asym": _int4asym}[fmt.name]
    codes, scales, extra = quantizer(blocks)
    return QuantizedWeight(fmt, k, n, codes.reshape(-1, n), scales, **extra)


def _divide(blocks: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """blocks / scale per block in float32; 0 where the scale is 0 (an empty block)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = blocks / scale[:, None, :]
    return np.where(scale[:, None, :] == 0, F32(0), q).astype(F32)


def _nvfp4(blocks: np.ndarray):
    amax = F32(np.abs(blocks).max())
    s2 = amax / F32(E2M1_MAX * E4M3_MAX) if amax > 0 else F32(1.0)
    s2 = max(F32(s2), FP32_MIN_NORMAL)
    block_amax = np.abs(blocks).max(axis=1)  # [B, N]
    scale_codes = encode_e4m3(block_amax / (F32(E2M1_MAX) * s2))
    effective = (decode_e4m3(scale_codes) * s2).astype(F32)
    return encode_e2m1(_divide(blocks, effective)), scale_codes, {"global_scale": F32(s2)}


def _mxfp4(blocks: np.ndarray):
    block_amax = np.abs(blocks).max(axis=1).astype(np.float64)
    exponent = np.where(block_amax > 0, floor_log2(np.where(block_amax > 0, block_amax, 1.0)) - 2, -E8M0_BIAS)
    exponent = np.clip(exponent, -E8M0_BIAS, E8M0_BIAS)
    scale_codes = (exponent + E8M0_BIAS).astype(np.uint8)
    return encode_e2m1(_divide(blocks, decode_e8m0(scale_codes))), scale_codes, {}


def _int4(blocks: np.ndarray):
    block_amax = np.abs(blocks).max(axis=1)
    scale = np.where(block_amax > 0, block_amax / F32(7), F32(1)).astype(F32)
    q = np.clip(np.rint(_divide(blocks, scale)), -8, 7).astype(np.int8)
    return (q.astype(np.uint8) & 0xF), scale, {}


def _int4asym(blocks: np.ndarray):
    lo = np.minimum(blocks.min(axis=1), F32(0))
    hi = np.maximum(blocks.max(axis=1), F32(0))
    span = (hi - lo).astype(F32)
    scale = np.where(span > 0, span / F32(15), F32(1)).astype(F32)
    zero_points = np.clip(np.rint(-lo / scale), 0, 15).astype(np.uint8)
    q = np.clip(np.rint(_divide(blocks, scale)) + zero_points[:, None, :], 0, 15).astype(np.uint8)
    return q, scale, {"zero_points": zero_points}
