"""The element and scale types of the FP4 formats: E2M1 (FP4), E4M3FN (FP8) and E8M0.

Codes are uint8 holding the format's bit pattern (E2M1 in the low nibble). Encoding rounds to
nearest, ties to even, and saturates to the largest finite value (E2M1 ±6, E4M3FN ±448), the
conversion `ml_dtypes` and ONNX `Cast(saturate=1)` do; the sign of zero is kept (−0 → 0x8 /
0x80). NaN and ±inf are refused (E2M1 has neither). E8M0 is an exponent alone: code e means
2^(e − 127), 0xFF is NaN.
"""

from __future__ import annotations

import numpy as np

from mlpdeploy.quant.grid import QuantError, round_to_grid

E2M1_MAX = 6.0
E4M3_MAX = 448.0
E8M0_BIAS = 127

# Non-negative values in code order (code = index; the sign is bit 3 for E2M1, bit 7 for E4M3).
E2M1_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
E2M1_VALUES = np.concatenate([E2M1_GRID, -E2M1_GRID]).astype(np.float32)  # decode table for codes 0..15


def _e4m3_grid() -> np.ndarray:
    codes = np.arange(127)  # 0x7F is NaN
    exponent, mantissa = codes >> 3, codes & 7
    normal = (1 + mantissa / 8) * 2.0 ** (exponent - 7)
    subnormal = mantissa / 8 * 2.0**-6
    return np.where(exponent == 0, subnormal, normal)


E4M3_GRID = _e4m3_grid()
E4M3_VALUES = np.concatenate([E4M3_GRID, [np.nan], -E4M3_GRID, [np.nan]]).astype(np.float32)


def _refuse_nonfinite(x: np.ndarray, what: str) -> None:
    if not np.isfinite(x).all():
        raise QuantError(f"cannot encode NaN or inf as {what}; only finite values have a code")


def _encode(x: np.ndarray, grid: np.ndarray, sign_bit: int, what: str) -> np.ndarray:
    x = np.asarray(x, np.float32)
    _refuse_nonfinite(x, what)
    codes = round_to_grid(np.abs(x.astype(np.float64)), grid)
    return np.where(np.signbit(x), codes | sign_bit, codes).astype(np.uint8)


def encode_e2m1(x: np.ndarray) -> np.ndarray:
    """float → E2M1 codes (0..15): nearest, ties to even, saturating at ±6."""
    return _encode(x, E2M1_GRID, 0x8, "E2M1")


def decode_e2m1(codes: np.ndarray) -> np.ndarray:
    return E2M1_VALUES[np.asarray(codes, np.uint8) & 0xF]


def encode_e4m3(x: np.ndarray) -> np.ndarray:
    """float → E4M3FN codes: nearest, ties to even, saturating at ±448."""
    return _encode(x, E4M3_GRID, 0x80, "E4M3FN")


def decode_e4m3(codes: np.ndarray) -> np.ndarray:
    return E4M3_VALUES[np.asarray(codes, np.uint8)]


def decode_e8m0(codes: np.ndarray) -> np.ndarray:
    """E8M0 codes → 2^(code − 127) as float32 (0xFF → NaN); exact, denormals included."""
    codes = np.asarray(codes, np.uint8)
    values = np.ldexp(np.float64(1.0), np.minimum(codes, 0xFE).astype(np.int32) - E8M0_BIAS).astype(np.float32)
    return np.where(codes == 0xFF, np.float32(np.nan), values)


def floor_log2(x: np.ndarray) -> np.ndarray:
    """floor(log2(x)) exactly for positive finite x (through frexp: x = m·2^e, m in [0.5, 1))."""
    _, exponent = np.frexp(np.asarray(x, np.float64))
    return exponent.astype(np.int32) - 1
