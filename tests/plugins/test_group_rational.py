"""GroupRational: its definition (forms A and B, groups, the signed variant it is not), and its
ONNX function in ONNX Runtime CPU vs the torch reference — fixed cases and property tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlpdeploy.errors import OpError
from mlpdeploy.plugins.group_rational.onnx_function import ensure_function, group_rational_node, make_model, overload_name
from mlpdeploy.plugins.group_rational.reference import group_rational, group_rational_signed_powers

DTYPES = ["float32", "float16"]




def coefficients(model: ir.Model) -> tuple[torch.Tensor, torch.Tensor]:
    w = {k: torch.from_numpy(v.const_value.numpy().astype(np.float32)) for k, v in model.graph.initializers.items()}
    return w["numerator"], w["denominator"]


def reference(model: ir.Model, x: np.ndarray, form: str) -> np.ndarray:
    return group_rational(torch.from_numpy(x.astype(np.float32)), *coefficients(model), form).numpy()


def check_model(model: ir.Model) -> onnx.ModelProto:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)


def test_forms_by_hand():
    """y = P/Q at a few points, computed by hand from the definition."""
    a = torch.tensor([[0.5, 1.0, 0.25]])  # P = 0.5 + x + 0.25x²
    b = torch.tensor([[-0.5, 0.2]])  # form A: Q = 1 + 0.5|x| + 0.2x²; form B: Q = 1 + |−0.5x + 0.2x²|
    x = torch.tensor([[-2.0, 0.0, 1.0, 3.0]]).reshape(1, 4, 1)
    p = 0.5 + x + 0.25 * x**2
    torch.testing.assert_close(group_rational(x, a, b, "A"), p / (1 + 0.5 * x.abs() + 0.2 * x**2))
    torch.testing.assert_close(group_rational(x, a, b, "B"), p / (1 + (-0.5 * x + 0.2 * x**2).abs()))


def test_groups_take_their_own_coefficients():
    x = torch.linspace(-3, 3, 12).reshape(2, 6)
    num, den = torch.randn(3, 6), torch.randn(3, 4)
    y = group_rational(x, num, den, "A")
    for g in range(3):
        torch.testing.assert_close(y[:, 2 * g : 2 * g + 2], group_rational(x[:, 2 * g : 2 * g + 2], num[g : g + 1], den[g : g + 1], "A"))
    shared = group_rational(x, num[:1], den, "B")
    torch.testing.assert_close(shared, group_rational(x, num[:1].repeat(3, 1), den, "B"))


def test_signed_power_variant_is_not_form_a():
    """KAT's pure-torch helper (signed powers) agrees with form A for x ≥ 0 and differs for x < 0."""
    num, den = torch.randn(1, 6), torch.randn(2, 4)
    pos, neg = torch.linspace(0, 3, 8).repeat(1, 2), torch.linspace(-3, -0.5, 8).repeat(1, 2)
    torch.testing.assert_close(group_rational_signed_powers(pos, num, den), group_rational(pos, num, den, "A"))
    assert (group_rational_signed_powers(neg, num, den) - group_rational(neg, num, den, "A")).abs().max() > 1e-2


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        (((2, 6), (1, 6), (4, 4)), "not divisible into 4 groups"),
        (((2, 8), (3, 6), (4, 4)), r"numerator must be \[1, m\+1\]"),
        (((2, 8), (1, 6), (4,)), r"denominator must be \[groups, n\]"),
        (((2, 8), (1, 6), (4, 0)), "n >= 1"),
    ],
)
def test_shape_errors(shapes, match):
    x, num, den = (torch.zeros(s) for s in shapes)
    with pytest.raises(OpError, match=match):
        group_rational(x, num, den, "A")


def test_unknown_form():
    with pytest.raises(OpError, match="unknown GroupRational form 'C'; forms are A"):
        group_rational(torch.zeros(2, 4), torch.zeros(1, 2), torch.zeros(2, 1), "C")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [False, True], ids=["per-group", "shared"])
@pytest.mark.parametrize("form", ["A", "B"])
def test_function_matches_reference(form, shared, dtype, assert_close, ort_session):
    # 7 groups of 3 channels (prime group count, odd width), 3-D input, batch 1 and batch 3.
    model = make_model(21, 7, form=form, shared_numerator=shared, dtype=dtype, seed=3)
    inferred = check_model(model)
    out = inferred.graph.output[0].type.tensor_type
    assert out.elem_type == (onnx.TensorProto.FLOAT if dtype == "float32" else onnx.TensorProto.FLOAT16)
    assert [d.dim_param or d.dim_value for d in out.shape.dim] == ["dim0", "dim1", 21]
    sess, rng = ort_session(model), np.random.default_rng(4)
    for shape in [(1, 1, 21), (3, 5, 21)]:
        x = rng.uniform(-10, 10, shape).astype(dtype)
        (y,) = sess.run(None, {"x": x})
        assert y.dtype == np.dtype(dtype)
        assert_close(y, reference(model, x, form), dtype, f"{form}/{dtype}/{shape}")


@pytest.mark.parametrize("degrees", [(5, 4), (3, 2), (0, 1), (1, 6)])
def test_function_degrees(degrees, assert_close, ort_session):
    model = make_model(12, 4, degrees=degrees, rank=2)
    assert next(iter(model.functions))[2] == overload_name("A", *degrees)
    x = np.random.default_rng(0).uniform(-5, 5, (4, 12)).astype(np.float32)
    assert_close(ort_session(model).run(None, {"x": x})[0], reference(model, x, "A"), "float32")


@pytest.mark.parametrize("onnx_opset", [15, 18, 23])
def test_function_across_opsets(onnx_opset, assert_close, ort_session):
    model = make_model(8, 2, form="B", rank=2, onnx_opset=onnx_opset)
    check_model(model)
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    assert_close(ort_session(model).run(None, {"x": x})[0], reference(model, x, "B"), "float32")


def test_old_opset_refused():
    with pytest.raises(OpError, match="opset >= 15"):
        make_model(8, 2, onnx_opset=14)


def test_extreme_values_agree_with_reference(ort_session):
    """Huge inputs overflow x^5 to inf (inf/inf = NaN, as in KAT's kernels) in both faces alike;
    denormals, zeros and ±1e6 stay finite and agree."""
    model = make_model(8, 2, rank=2, seed=5)
    x = np.array([[1e30, -1e30, 1e-40, -1e-40, 0.0, 1e6, -1e6, 3.0]] * 2, dtype=np.float32)
    y, ref = ort_session(model).run(None, {"x": x})[0], reference(model, x, "A")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(ref[:, :2]).all() and np.isfinite(ref[:, 2:]).all()
    np.testing.assert_allclose(y[:, 2:], ref[:, 2:], rtol=1e-5, atol=1e-6)


def test_node_builder_and_function_checks():
    x = ir.Value(name="x", shape=ir.Shape(["b", 12]), type=ir.TensorType(ir.DataType.FLOAT16))
    num = ir.Value(name="num", shape=ir.Shape([1, 6]), type=ir.TensorType(ir.DataType.FLOAT16))
    den = ir.Value(name="den", shape=ir.Shape([4, 4]), type=ir.TensorType(ir.DataType.FLOAT16))
    node = group_rational_node(x, num, den, form="B", name="act")
    assert (node.domain, node.op_type, node.overload) == ("mlpdeploy", "GroupRational", "B_5_4")
    assert {k: a.value for k, a in node.attributes.items()} == {"form": "B", "plugin_namespace": "mlpdeploy", "plugin_version": "1"}
    assert node.outputs[0].dtype == ir.DataType.FLOAT16 and list(node.outputs[0].shape) == ["b", 12]
    node.overload = "A_5_4"
    with pytest.raises(OpError, match="has overload 'A_5_4', but its inputs make it 'B_5_4'"):
        ensure_function(ir.Model(ir.Graph([x], node.outputs, nodes=[node]), ir_version=10), node)
    dynamic = ir.Value(name="d", shape=ir.Shape(["g", 4]), type=ir.TensorType(ir.DataType.FLOAT16))
    with pytest.raises(OpError, match="denominator 'd' needs a static shape"):
        group_rational_node(x, num, dynamic)


@settings(max_examples=25, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 3, 5, 7]),
    per_group=st.sampled_from([1, 2, 3, 5, 13]),
    rows=st.sampled_from([1, 2, 3, 7, 11]),
    form=st.sampled_from(["A", "B"]),
    shared=st.booleans(),
    degrees=st.sampled_from([(5, 4), (3, 2), (2, 3), (1, 1)]),
    scale=st.sampled_from([1e-3, 1.0, 10.0]),
    seed=st.integers(0, 2**16),
)
def test_function_property(groups, per_group, rows, form, shared, degrees, scale, seed, ort_session):
    """Any group count, group width (1, odd, prime), row count (incl. 1), form and degrees; inputs
    spanning [-10·s, 10·s]: the ONNX function agrees with the reference to fp32 rounding."""
    model = make_model(groups * per_group, groups, form=form, shared_numerator=shared, degrees=degrees, rank=2, seed=seed)
    x = (np.random.default_rng(seed).uniform(-10, 10, (rows, groups * per_group)) * scale).astype(np.float32)
    y, ref = ort_session(model).run(None, {"x": x})[0], reference(model, x, form)
    np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(ref).max())))
