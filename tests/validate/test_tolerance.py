"""The tolerance rule (validate/tolerance.py): atol scales with each output's RMS, the verdict is
Polygraphy's elementwise check, and `used` ≤ 1 exactly when that check passes; int8 activations are
judged by relative RMS error, Polygraphy's SNR check."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.validate.metrics import error_stats
from mlpdeploy.validate.tolerance import A_INT8, SCALED, rms, tolerances, used

# no subnormals: Polygraphy subtracts in float32, where they flush to zero on some builds, and mlpdeploy
# in float64 — a 5.6e-39 error against a zero reference with atol 0 passes there and fails here
FINITE = st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False, width=32)
ARRAYS = hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6), elements=FINITE)


def test_defaults_per_precision_scale_with_rms():
    fp32 = tolerances("fp32")
    assert fp32.scaled and (fp32.atol_rms, fp32.rtol) == (1e-3, 1e-3)
    assert fp32.for_output(np.full((2, 3), 4.0, np.float32)) == (pytest.approx(4e-3), 1e-3)
    assert tolerances("fp16").atol_rms == 2e-2 and tolerances("bf16").atol_rms == 8e-2
    assert SCALED["fp32"][0] < SCALED["int8"][0] and SCALED["fp32"][0] < SCALED["fp16"][0] < SCALED["bf16"][0]
    assert "1e-3" in fp32.describe().replace("0.001", "1e-3") and fp32.to_json()["rule"] == "scaled"


def test_explicit_atol_is_absolute_and_rtol_overrides():
    fixed = tolerances("fp16", atol=0.5)
    assert not fixed.scaled and fixed.for_output(np.full(3, 1000.0)) == (0.5, 2e-2)
    assert tolerances("fp32", rtol=0.1).for_output(np.ones(4)) == (pytest.approx(1e-3), 0.1)
    assert fixed.to_json()["rule"] == "absolute" and "atol 0.5" in fixed.describe()


def test_unknown_precision():
    with pytest.raises(MlpdeployError, match="unknown precision 'int3'"):
        tolerances("int3")


def test_integer_outputs_must_match_exactly():
    ids = np.array([3, 4, 5])
    assert tolerances("bf16").for_output(ids) == (0.0, 0.0)
    assert used(ids, ids, 0.0, 0.0) == 0.0 and used(ids + np.array([0, 1, 0]), ids, 0.0, 0.0) == np.inf


def test_nan_fails_and_zero_reference_has_a_floor():
    tol = tolerances("fp32")
    ref = np.zeros(4, np.float32)
    atol, rtol = tol.for_output(ref)
    assert atol == pytest.approx(2.0**-24)
    assert used(ref, ref, atol, rtol) == 0.0 and used(ref + 1e-9, ref, atol, rtol) <= 1.0
    assert used(np.array([1.0, np.nan]), np.array([1.0, 2.0]), 1.0, 1.0) == np.inf
    assert used(np.array([np.nan]), np.array([np.nan]), 1.0, 1.0) == np.inf  # as Polygraphy: NaN never matches


@settings(max_examples=60, deadline=None)
@given(ref=ARRAYS, noise=st.floats(1e-7, 1e-1), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_the_rule_is_scale_free(ref, noise, scale, seed):
    """Multiplying reference and candidate by the same factor changes neither atol's share of the
    RMS nor the verdict: the rule judges relative to each output's own magnitude."""
    ref = ref.astype(np.float64)
    cand = ref + noise * np.random.default_rng(seed).standard_normal(ref.shape) * (rms(ref) or 1.0)
    tol = tolerances("fp32")
    a1, r1 = tol.for_output(ref)
    a2, r2 = tol.for_output(ref * scale)
    if rms(ref) * 1e-3 > tol.floor and rms(ref) * scale * 1e-3 > tol.floor:
        assert a2 == pytest.approx(a1 * scale, rel=1e-9) and r1 == r2
        assert used(cand * scale, ref * scale, a2, r2) == pytest.approx(used(cand, ref, a1, r1), rel=1e-6, abs=1e-9)


@settings(max_examples=80, deadline=None)
@given(ref=ARRAYS, data=st.data(), atol=st.floats(0.0, 10.0), rtol=st.floats(0.0, 0.5))
def test_used_matches_polygraphys_elementwise_verdict(ref, data, atol, rtol):
    from polygraphy.comparator import Comparator, IterationResult, RunResults, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    cand = data.draw(hnp.arrays(np.float32, ref.shape, elements=FINITE))
    if data.draw(st.booleans()):
        cand = np.where(np.random.default_rng(0).random(ref.shape) < 0.5, ref, cand).astype(np.float32)  # many exact matches
    results = RunResults([("cand", [IterationResult({"y": cand}, runner_name="cand")]),
                          ("ref", [IterationResult({"y": ref}, runner_name="ref")])])
    old = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    try:
        accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat="elemwise"))
    finally:
        G_LOGGER.module_severity = old
    polygraphy_passed = bool(accuracy[0][("cand", "ref")][0]["y"])
    u = used(cand, ref, atol, rtol)
    margin = abs(u - 1.0) > 1e-6  # at the boundary the two differ by how |c−r|/|r| rounds
    if margin:
        assert (u <= 1.0) == polygraphy_passed, (u, polygraphy_passed)


@settings(max_examples=40, deadline=None)
@given(ref=ARRAYS, factor=st.floats(0.0, 3.0))
def test_error_stats_carry_the_tolerance_used(ref, factor):
    ref = ref.astype(np.float64)
    atol, rtol = tolerances("fp32").for_output(ref)
    cand = ref + factor * atol  # every element off by factor × atol
    stats = error_stats(cand, ref, tolerance=(atol, rtol))
    assert stats.scale == pytest.approx(rms(ref)) and stats.atol == atol
    assert stats.used <= factor * (1 + 1e-6) + 1e-12
    big = np.abs(ref) * rtol <= atol  # elements judged by atol alone use exactly `factor` of it
    if big.any() and atol > 0:
        assert stats.used == pytest.approx(factor, rel=1e-5, abs=1e-9)


def test_worst_keeps_one_feeds_numbers_together():
    ref = np.linspace(-3, 3, 50, dtype=np.float64)
    limits = tolerances("fp32").for_output(ref)
    small = error_stats(ref + 1e-4, ref, True, limits, "prefill")
    large = error_stats(ref + 1e-2, ref, False, limits, "decode")
    worst = small.worst(large)
    assert worst.feed == "decode" and worst.max_abs == large.max_abs and worst.used == large.used and worst.passed is False
    assert large.worst(small).feed == "decode"


# ---------------------------------------------------------------- int8 activations: relative RMS error


def test_int8_activations_are_judged_by_relative_rms_error():
    tol = tolerances("int8")
    assert tol.stat == "rms" and tol.atol_rms == A_INT8 and tol.to_json()["stat"] == "rms"
    assert "relative RMS error" in tol.describe() and "(int8)" in tol.describe()
    assert tolerances("fp32").stat == "elementwise" and tolerances("int8", rtol=0.05).stat == "elementwise"  # --rtol: elementwise
    assert tolerances("int8", atol=0.5).stat == "elementwise"


def test_int8_rule_passes_rounding_flips_and_fails_a_scaled_output():
    """A few elements far off (activations that rounded to the other int8 code) pass; the whole
    output off by a few percent of itself fails, though no element is far off."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(4096) * 3.0
    tol = tolerances("int8")
    atol, rtol = tol.for_output(ref)
    flips = ref.copy()
    flips[rng.choice(ref.size, 4, replace=False)] += 2.0 * rms(ref)  # 4 of 4096 elements off by 2 × RMS
    assert used(flips, ref, atol, rtol, "rms") < 1.0 < used(flips, ref, 0.05 * rms(ref), 0.05)  # the elementwise rule fails it
    scaled = ref * (1 + 1.5 * A_INT8)
    assert used(scaled, ref, atol, rtol, "rms") == pytest.approx(1.5, rel=1e-9)
    stats = error_stats(flips, ref, tolerance=(atol, rtol), stat="rms")
    assert stats.used == pytest.approx(stats.rel_rms / A_INT8, rel=1e-9)


def test_int8_rule_nan_fails_and_zero_reference():
    tol = tolerances("int8")
    zero = np.zeros(8)
    atol, rtol = tol.for_output(zero)
    assert used(zero, zero, atol, rtol, "rms") == 0.0 and used(zero + 1.0, zero, atol, rtol, "rms") > 1.0
    assert used(np.array([1.0, np.nan]), np.array([1.0, 2.0]), 1.0, 0.0, "rms") == np.inf


@settings(max_examples=60, deadline=None)
@given(ref=ARRAYS, data=st.data())
def test_int8_rule_is_polygraphys_snr_check(ref, data):
    """RMS(c − r) ≤ a · RMS(r) ⇔ Polygraphy's SnrCompareFunc (signal: the reference) at −20·log10(a) dB."""
    from polygraphy.comparator import Comparator, IterationResult, RunResults, SnrCompareFunc
    from polygraphy.logger import G_LOGGER

    ref = ref.astype(np.float64)
    cand = ref + data.draw(st.floats(0.0, 3.0)) * A_INT8 * rms(ref) * np.random.default_rng(data.draw(st.integers(0, 99))).standard_normal(ref.shape)
    atol, rtol = tolerances("int8").for_output(ref)
    u = used(cand, ref, atol, rtol, "rms")
    if rms(ref) * A_INT8 <= 2.0**-24 or abs(u - 1.0) < 1e-6 or u == 0.0:
        return  # the floor, the boundary, and an exact match (Polygraphy: inf dB) are not what this compares
    results = RunResults([("ref", [IterationResult({"y": ref}, runner_name="ref")]), ("cand", [IterationResult({"y": cand}, runner_name="cand")])])
    old = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    try:
        accuracy = Comparator.compare_accuracy(results, compare_func=SnrCompareFunc(snr_threshold=-20 * np.log10(A_INT8)))
    finally:
        G_LOGGER.module_severity = old
    assert (u <= 1.0) == bool(accuracy[0][("ref", "cand")][0]["y"])
