"""Property tests (hypothesis) of the weight codecs: random shapes (1, odd, prime, K not a
multiple of the block), all-zero and constant blocks, magnitudes from 1e-30 to 1e30, NaN/inf
refused; round trip against onnx.reference and the formats' error bounds."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mlpdeploy.contract import E2M1_GRID  # noqa: E402
from mlpdeploy.quant import QuantError, decode_e2m1, parse_format  # noqa: E402

from .onnx_forms import reference_dequantize  # noqa: E402

SPECS = ["nvfp4", "mxfp4", "int4", "int4-64", "int4-128", "int4asym", "int4asym-128"]
DIMS = st.sampled_from([1, 2, 3, 7, 16, 17, 31, 33, 64, 97, 131])
PROPERTY = settings(max_examples=40, deadline=None)


def _weight(k: int, n: int, seed: int, magnitude: float, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "zeros":
        return np.zeros((k, n), np.float32)
    if kind == "constant":
        return np.full((k, n), magnitude * rng.choice([-1.0, 1.0]), np.float32)
    w = rng.standard_normal((k, n)) * magnitude
    if kind == "outliers":
        w[rng.integers(0, k), rng.integers(0, n)] *= 100
    return w.astype(np.float32)


WEIGHTS = st.builds(
    _weight, k=DIMS, n=DIMS, seed=st.integers(0, 2**16),
    magnitude=st.sampled_from([1e-30, 1e-6, 1e-2, 1.0, 3.0, 1e6, 1e30]),
    kind=st.sampled_from(["normal", "normal", "outliers", "zeros", "constant"]),
)


@PROPERTY
@given(w=WEIGHTS, spec=st.sampled_from(SPECS))
def test_round_trip_matches_onnx_reference(w, spec):
    """Shape, dtype, zeros stay zeros, and the decode equals DequantizeLinear's bit for bit."""
    q = parse_format(spec).quantize(w)
    d = q.dequantize()
    assert d.shape == w.shape and d.dtype == np.float32 and np.isfinite(d).all()
    assert np.array_equal(d.view(np.uint32) & 0x7FFFFFFF, reference_dequantize(q).view(np.uint32) & 0x7FFFFFFF)
    assert np.all(d[w == 0] == 0)


@PROPERTY
@given(w=WEIGHTS, spec=st.sampled_from(SPECS))
def test_error_bound(w, spec):
    """Each element is off by at most half a step of its block's grid (E2M1's gap at that value
    for FP4, one scale for INT4); MXFP4 may also saturate at 6·2^e, within 2^e·(amax/2^e − 6).
    An NVFP4 block whose FP8 scale underflows (amax/6 below half E4M3's smallest subnormal,
    2^-10, in units of the tensor scale) decodes to zeros."""
    fmt = parse_format(spec)
    q = fmt.quantize(w)
    d = q.dequantize().astype(np.float64)
    scale = np.repeat(q.block_scales().astype(np.float64), q.block, axis=0)[: w.shape[0]]
    err = np.abs(d - w.astype(np.float64))
    if fmt.fp4:
        x = np.abs(w / np.where(scale > 0, scale, 1))
        below = np.clip(np.searchsorted(E2M1_GRID, np.minimum(x, 6), side="right") - 1, 0, len(E2M1_GRID) - 2)
        gap = E2M1_GRID[below + 1] - E2M1_GRID[below]  # spacing of the E2M1 interval holding x
        bound = scale * (gap / 2 + np.maximum(x - 6, 0)) * (1 + 1e-6) + 1e-38
        # NVFP4 also loses what the FP8 block scale rounds away at the top (< 1/16 relative)
        bound += np.abs(w) * (1 / 16 if fmt.name == "nvfp4" else 0)
        if fmt.name == "nvfp4":
            flushed = scale == 0
            assert np.all(np.abs(w[flushed]) <= 6 * 2.0**-10 * float(q.global_scale) * (1 + 1e-6))
            bound = np.where(flushed, np.abs(w), bound)
    else:
        bound = scale * (0.5 + 1e-6)
    assert np.all(err <= bound)


@PROPERTY
@given(w=WEIGHTS, spec=st.sampled_from(SPECS), shift=st.integers(-40, 40))
def test_codes_are_power_of_two_equivariant(w, spec, shift):
    """Scaling the weight by 2^s keeps every code (the scales absorb it) while no scale clamps."""
    peak = float(np.abs(w).max())
    scaled = (w.astype(np.float64) * 2.0**shift).astype(np.float32)
    if peak == 0 or not (1e-25 < peak * 2.0**shift < 1e25 and 1e-25 < peak < 1e25) or np.count_nonzero(w) != np.count_nonzero(scaled):
        return  # outside the range where no scale or element underflows
    a, b = parse_format(spec).quantize(w), parse_format(spec).quantize(scaled)
    small = np.abs(w) < peak * 2.0**-20  # elements that round to zero anyway may sit near underflow
    mask = np.concatenate([~small, np.ones((a.codes.shape[0] - w.shape[0], w.shape[1]), bool)])
    assert np.array_equal(a.codes[mask], b.codes[mask])


@PROPERTY
@given(k=DIMS, n=DIMS, value=st.sampled_from([1e-20, 0.37, 5.0, 1e20]), spec=st.sampled_from([s for s in SPECS if s != "mxfp4"]))
def test_constant_blocks_decode_close(k, n, value, spec):
    """A constant block decodes to itself (to float32 rounding) where the scale is free (not MXFP4's
    powers of two, whose error test_error_bound bounds)."""
    w = np.full((k, n), value, np.float32)
    d = parse_format(spec).quantize(w).dequantize()
    assert np.allclose(d, w, rtol=2e-6, atol=0)


@PROPERTY
@given(w=WEIGHTS, spec=st.sampled_from(SPECS), bad=st.sampled_from([np.nan, np.inf, -np.inf]), seed=st.integers(0, 99))
def test_nonfinite_always_refused(w, spec, bad, seed):
    w = w.copy()
    rng = np.random.default_rng(seed)
    w[rng.integers(0, w.shape[0]), rng.integers(0, w.shape[1])] = bad
    with pytest.raises(QuantError, match="non-finite value"):
        parse_format(spec).quantize(w)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=64))
def test_e2m1_decode_of_encode_is_nearest(values):
    x = np.float32(values)
    decoded = decode_e2m1(__import__("mlpdeploy.quant", fromlist=["encode_e2m1"]).encode_e2m1(x)).astype(np.float64)
    grid = np.concatenate([-E2M1_GRID[::-1], E2M1_GRID])
    nearest = np.abs(np.clip(x, -6, 6)[:, None] - grid[None]).min(axis=1)
    assert np.allclose(np.abs(np.clip(x, -6, 6) - decoded), nearest)
