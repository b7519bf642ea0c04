"""BSplineKAN: its bases against scipy's B-splines (an independent oracle) and its ONNX function in
ONNX Runtime CPU vs the torch reference (the Triton kernel: test_bspline_kan_kernel.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlpdeploy.errors import OpError
from mlpdeploy.plugins.bspline_kan.onnx_function import make_model, random_weights
from mlpdeploy.plugins.bspline_kan.reference import b_spline_bases, bspline_kan, uniform_grid


def reference(model: ir.Model, x: np.ndarray) -> np.ndarray:
    w = {k: torch.from_numpy(v.const_value.numpy().astype(np.float32)) for k, v in model.graph.initializers.items()}
    return bspline_kan(torch.from_numpy(x.astype(np.float32)), w["grid"], w["base_weight"], w["spline_weight"]).numpy()


@pytest.mark.parametrize("order", [1, 2, 3])
def test_bases_match_scipy(order):
    """Cox–de Boor bases on efficient-kan's extended uniform grid equal scipy's basis elements (0 outside support)."""
    interpolate = pytest.importorskip("scipy.interpolate")
    grid = uniform_grid(1, grid_size=5, spline_order=order, grid_range=(-1.0, 1.0))
    x = torch.linspace(-2.2, 2.2, 301)[:, None]
    ours = b_spline_bases(x.double(), grid.double(), order)[:, 0, :].numpy()
    knots = grid[0].double().numpy()
    for j in range(ours.shape[1]):
        theirs = np.nan_to_num(interpolate.BSpline.basis_element(knots[j : j + order + 2], extrapolate=False)(x[:, 0].double().numpy()))
        np.testing.assert_allclose(ours[:, j], theirs, atol=1e-12, err_msg=f"basis {j}")
    inside = (x[:, 0] >= -1) & (x[:, 0] < 1)
    np.testing.assert_allclose(ours[inside.numpy()].sum(1), 1.0, atol=1e-12)  # partition of unity on the grid


def test_layer_is_silu_base_plus_spline():
    w = {k: torch.from_numpy(v) for k, v in random_weights(3, 2, seed=1).items()}
    x = torch.tensor([[0.3, -0.7, 2.5]])
    bases = b_spline_bases(x, w["grid"], 3).reshape(1, -1)
    expect = torch.nn.functional.silu(x) @ w["base_weight"] + bases @ w["spline_weight"]
    torch.testing.assert_close(bspline_kan(x, **w), expect)
    assert torch.count_nonzero(bases[0, 16:]) == 0  # 2.5 is outside the extended grid of feature 2: its bases are 0


def test_shape_errors():
    w = {k: torch.from_numpy(v) for k, v in random_weights(4, 3).items()}
    with pytest.raises(OpError, match="input has last dim 5, the weights expect 4"):
        bspline_kan(torch.zeros(2, 5), **w)
    with pytest.raises(OpError, match="shapes do not agree"):
        bspline_kan(torch.zeros(2, 4), w["grid"], w["base_weight"], w["spline_weight"][:-1])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("order", [3, 1])
def test_function_matches_reference(order, dtype, assert_close, ort_session):
    model = make_model(13, 7, spline_order=order, grid_range=(-2.0, 2.0), dtype=dtype, seed=2)
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    assert [d.dim_param or d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim] == ["dim0", "dim1", 7]
    sess, rng = ort_session(model), np.random.default_rng(3)
    for shape in [(1, 1, 13), (2, 5, 13)]:
        x = rng.uniform(-3, 3, shape).astype(dtype)
        (y,) = sess.run(None, {"x": x})
        assert y.dtype == np.dtype(dtype)
        assert_close(y, reference(model, x), dtype, f"order {order}/{dtype}/{shape}")


@settings(max_examples=20, deadline=None)
@given(
    in_features=st.sampled_from([1, 2, 5, 13]),
    out_features=st.sampled_from([1, 3, 8]),
    rows=st.sampled_from([1, 2, 7]),
    grid_size=st.sampled_from([1, 3, 5]),
    order=st.sampled_from([1, 2, 3]),
    span=st.sampled_from([0.5, 3.0, 10.0]),
    seed=st.integers(0, 2**16),
)
def test_function_property(in_features, out_features, rows, grid_size, order, span, seed, ort_session):
    model = make_model(in_features, out_features, grid_size=grid_size, spline_order=order, rank=2, seed=seed)
    x = np.random.default_rng(seed).uniform(-span, span, (rows, in_features)).astype(np.float32)
    y, ref = ort_session(model).run(None, {"x": x})[0], reference(model, x)
    np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(ref).max())))


def test_extreme_values_agree_with_reference(ort_session):
    """±1e30 (far outside the grid: bases 0, SiLU saturates), denormals and zeros: finite and equal to the reference."""
    model = make_model(4, 3, rank=2, seed=6)
    x = np.array([[1e30, -1e30, 1e-40, 0.0], [-1e-40, 2.5, -0.3, 1e6]], dtype=np.float32)
    y, ref = ort_session(model).run(None, {"x": x})[0], reference(model, x)
    assert np.isfinite(ref).all()
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
