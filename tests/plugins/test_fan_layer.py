"""FANLayer: its definition, and its ONNX function in ONNX Runtime CPU vs the torch reference
(the Triton kernel: test_fan_layer_kernel.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlpdeploy.errors import OpError
from mlpdeploy.plugins.fan_layer.onnx_function import ACTIVATIONS, fan_layer_node, make_model, random_weights
from mlpdeploy.plugins.fan_layer.reference import fan_layer


def reference(model: ir.Model, x: np.ndarray, activation: str) -> np.ndarray:
    w = {k: torch.from_numpy(v.const_value.numpy().astype(np.float32)) for k, v in model.graph.initializers.items()}
    return fan_layer(torch.from_numpy(x.astype(np.float32)), w["w_p"], w["w_g"], w["b_p"], w["b_g"], activation).numpy()


def test_definition_by_hand():
    w = {k: torch.from_numpy(v) for k, v in random_weights(4, 2, 3, seed=1).items()}
    x = torch.randn(5, 4)
    p, g = x @ w["w_p"] + w["b_p"], x @ w["w_g"] + w["b_g"]
    y = fan_layer(x, **w, activation="gelu")
    torch.testing.assert_close(y, torch.cat([p.cos(), p.sin(), torch.nn.functional.gelu(g)], -1))
    assert y.shape == (5, 2 * 2 + 3)


def test_errors():
    w = random_weights(4, 2, 3)
    t = {k: torch.from_numpy(v) for k, v in w.items()}
    with pytest.raises(OpError, match="unknown FANLayer activation 'tanh'"):
        fan_layer(torch.zeros(1, 4), **t, activation="tanh")
    with pytest.raises(OpError, match=r"biases must be b_p \[2\] and b_g \[3\]"):
        fan_layer(torch.zeros(1, 4), t["w_p"], t["w_g"], t["b_g"], t["b_g"])
    with pytest.raises(OpError, match="last dim 5, the weights expect 4"):
        fan_layer(torch.zeros(1, 5), **t)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_function_matches_reference(activation, dtype, assert_close, ort_session):
    model = make_model(13, 21, activation=activation, dtype=dtype, seed=2)  # P = 5, D = 11
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    assert [d.dim_param or d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim] == ["dim0", "dim1", 21]
    sess, rng = ort_session(model), np.random.default_rng(3)
    for shape in [(1, 1, 13), (2, 7, 13)]:
        x = rng.uniform(-3, 3, shape).astype(dtype)
        (y,) = sess.run(None, {"x": x})
        assert_close(y, reference(model, x, activation), dtype, f"{activation}/{dtype}/{shape}")


def test_node_builder_output_shape():
    x = ir.Value(name="x", shape=ir.Shape(["b", 6]), type=ir.TensorType(ir.DataType.FLOAT))
    values = [ir.Value(name=k, shape=ir.Shape(v.shape), type=ir.TensorType(ir.DataType.FLOAT)) for k, v in random_weights(6, 4, 9).items()]
    node = fan_layer_node(x, *values, activation="relu", name="fan")
    assert node.overload == "relu" and list(node.outputs[0].shape) == ["b", 17]
    assert node.attributes["activation"].value == "relu" and node.attributes["plugin_namespace"].value == "mlpdeploy"


@settings(max_examples=20, deadline=None)
@given(
    in_features=st.sampled_from([1, 3, 16]),
    out_features=st.sampled_from([1, 4, 7, 33]),
    rows=st.sampled_from([1, 2, 11]),
    activation=st.sampled_from(ACTIVATIONS),
    span=st.sampled_from([0.1, 3.0, 10.0]),
    seed=st.integers(0, 2**16),
)
def test_function_property(in_features, out_features, rows, activation, span, seed, ort_session):
    """Widths 1, odd and prime (P may be 0), inputs spanning [-10, 10]: the function agrees with the reference."""
    model = make_model(in_features, out_features, activation=activation, rank=2, seed=seed)
    x = np.random.default_rng(seed).uniform(-span, span, (rows, in_features)).astype(np.float32)
    y, ref = ort_session(model).run(None, {"x": x})[0], reference(model, x, activation)
    np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(ref).max())))


def test_extreme_values_agree_with_reference(ort_session):
    """Denormals, zeros and |x| up to 1e3 (cos/sin of large arguments: both sides reduce the same fp32 value)."""
    model = make_model(4, 9, rank=2, seed=6)
    x = np.array([[1e-40, -1e-40, 0.0, 1e3], [-1e3, 5.0, -1e-38, 0.5]], dtype=np.float32)
    y, ref = ort_session(model).run(None, {"x": x})[0], reference(model, x, "gelu")
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
