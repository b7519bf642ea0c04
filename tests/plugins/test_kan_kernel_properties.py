"""Property tests (hypothesis) of the KAN ops' Triton kernels vs their torch references: random
shapes (1, odd, prime), dtypes and attributes. CPU: Triton's interpreter; bench/gpu.sh runs this
file compiled on a GPU (it is skipped where hypothesis is not installed). The fixed cases and the
helpers are in test_<op>_kernel.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mlpdeploy.plugins.fan_layer.reference import ACTIVATIONS  # noqa: E402


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # skips the whole file, as the sibling would, without a device
    return module


RATIONAL, BSPLINE, FAN = (_sibling(f"test_{op}_kernel") for op in ("group_rational", "bspline_kan", "fan_layer"))
DTYPES = ["float32", "float16", "bfloat16"]
# assert_close is a pure function: sharing it across examples is safe
PROPERTY = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(
    groups=st.sampled_from([1, 2, 3, 8]),
    per_group=st.sampled_from([1, 3, 5, 17]),
    rows=st.sampled_from([1, 2, 7]),
    form=st.sampled_from(["A", "B"]),
    shared=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_group_rational_kernel(groups, per_group, rows, form, shared, dtype, seed, assert_close):
    """Any group count, width (1, odd, prime), rows (incl. 1), form, dtype; inputs in [-10, 10]."""
    RATIONAL.run_and_compare(*RATIONAL.problem((rows,), groups, per_group, shared=shared, seed=seed), form, dtype, assert_close)


@PROPERTY
@given(
    in_features=st.sampled_from([1, 3, 17]),
    out_features=st.sampled_from([1, 5, 19]),
    rows=st.sampled_from([1, 2, 7]),
    grid_size=st.sampled_from([1, 3, 5]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_bspline_kan_kernel(in_features, out_features, rows, grid_size, dtype, seed, assert_close):
    """Any widths (1, odd, prime), grid sizes; inputs in [-4, 4] (inside, on and outside the extended grid)."""
    BSPLINE.run_kernel((rows,), in_features, out_features, dtype, assert_close, grid_size=grid_size, span=4.0, seed=seed)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # sigmoid of large negative inputs
@PROPERTY
@given(
    in_features=st.sampled_from([1, 3, 17]),
    p=st.sampled_from([0, 1, 5, 16]),
    d=st.sampled_from([1, 7, 19]),
    rows=st.sampled_from([1, 2, 7]),
    activation=st.sampled_from(ACTIVATIONS),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_fan_layer_kernel(in_features, p, d, rows, activation, dtype, seed, assert_close):
    """Any widths (P may be 0), activations; inputs in [-10, 10]."""
    FAN.run_kernel((rows,), in_features, p, d, activation, dtype, assert_close, span=10.0, seed=seed)
