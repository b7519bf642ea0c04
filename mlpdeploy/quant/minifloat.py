"""The element and scale types of the FP4 formats: E2M1 (FP4), E4M3FN (FP8) and E8M0.

Codes are uint8 holding the format's bit pattern (E2M1 in the low nibble). Encoding rounds to
nearest, ties to even, and saturates to the largest finite value (E2M1 ±6, E4M3FN ±448), the
conversion `ml_dtypes` and ONNX `Cast(saturate=1)` do; the sign of zero is kept (−0 → 0x8 /
0x80). NaN and ±inf are refused (E2M1 has neither). E8M0 is an exponent alone: code e means
2^(e − 127), 0xFF is NaN.
"""

from __future__ import annotations

import numpy as np

from mlpdeploy.contract import E2M1_GRID, E2M1_VALUES, E4M3_GRID, E4M3_VALUES, E8M0_VALUES
from mlpdeploy.quant.grid import QuantError, round_to_grid


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
    return E8M0_VALUES[np.asarray(codes, np.uint8)]


def floor_log2(x: np.ndarray) -> np.ndarray:
    """floor(log2(x)) exactly for positive finite x (through frexp: x = m·2^e, m in [0.5, 1))."""
    _, exponent = np.frexp(np.asarray(x, np.float64))
    return exponent.astype(np.int32) - 1
