"""Round to the nearest value of a small number format, ties to even, saturating.

Every format here (E2M1, E4M3FN, E8M0 exponents, INT4) has its non-negative values in
increasing code order, so "ties to even" means "ties to the even code" (the code whose last
mantissa bit is 0). Rounding is done in float64, where every midpoint of these tables and
every float32 input is exact, so the result is exactly round-to-nearest-even of the input.
"""

from __future__ import annotations

import numpy as np

from mlpdeploy.errors import MlpdeployError


class QuantError(MlpdeployError):
    """A weight that cannot be quantized as asked (NaN/inf, out of range, a bad block size)."""


# Largest weight magnitude mlpdeploy quantizes: beyond it a block's scale times its largest code
# can overflow float32 (NVFP4's 6·448·s2, INT4's 15·scale).
MAX_MAGNITUDE = float(2.0**120)


def check_finite(array: np.ndarray, what: str) -> None:
    """A one-line QuantError when `array` holds NaN, ±inf or magnitudes past MAX_MAGNITUDE."""
    if array.size == 0:
        raise QuantError(f"{what} is empty; there is nothing to quantize")
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)[0]
        kind = "NaN" if np.isnan(array[tuple(bad)]) else "inf"
        count = int((~finite).sum())
        raise QuantError(
            f"{what} holds {count} non-finite value(s) ({kind} at index {tuple(int(i) for i in bad)}); "
            "quantization needs finite weights: fix the checkpoint or leave this layer out of the quantized scope"
        )
    peak = float(np.abs(array).max())
    if peak > MAX_MAGNITUDE:
        raise QuantError(f"{what} has a weight of magnitude {peak:.3g}, past the {MAX_MAGNITUDE:.3g} mlpdeploy can scale without float32 overflow")


def round_to_grid(magnitude: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of `grid` (sorted non-negative values, code = index) to each
    `magnitude` (non-negative, float64-exact), ties to the even index, saturating at the last."""
    grid = np.asarray(grid, np.float64)
    mids = (grid[:-1] + grid[1:]) / 2
    a = np.asarray(magnitude, np.float64)
    idx = np.searchsorted(mids, a, side="left")  # number of midpoints strictly below a
    tie = np.zeros(a.shape, bool)
    inside = idx < len(mids)
    tie[inside] = a[inside] == mids[idx[inside]]
    idx = np.where(tie & (idx % 2 == 1), idx + 1, idx)  # on a midpoint: move up when the lower code is odd
    return idx.astype(np.uint8)
