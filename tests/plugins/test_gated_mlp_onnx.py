"""GatedMLP's ONNX function: checker, strict shape inference, ONNX Runtime CPU vs the torch reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from mlpdeploy.plugins.forms import function_body_form, plugin_nodes
from mlpdeploy.plugins.gated_mlp.onnx_function import (
    ACTIVATIONS,
    ensure_function,
    gated_mlp_node,
    make_model,
    overload_name,
)
from mlpdeploy.plugins.gated_mlp.reference import gated_mlp

BIASES = {"nobias": (False, False), "bias": (True, True), "bgu": (True, False), "bd": (False, True)}
LEVELS = {"noopt": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "default": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def session(model: ir.Model, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])


def weights(model: ir.Model) -> dict[str, torch.Tensor]:
    """Initializers upcast to fp32: the reference sees exactly the weights the model holds."""
    return {
        name: torch.from_numpy(v.const_value.numpy().astype(np.float32)) for name, v in model.graph.initializers.items()
    }


def reference(model: ir.Model, x: np.ndarray, activation: str) -> np.ndarray:
    w = weights(model)
    xt = torch.from_numpy(x.astype(np.float32))
    return gated_mlp(xt, w["w_gate_up"], w["w_down"], w.get("b_gate_up"), w.get("b_down"), activation).numpy()


def check(model: ir.Model) -> onnx.ModelProto:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("bias", BIASES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_function_matches_reference(activation, bias, dtype, assert_close):
    # Odd sizes, d_out != d, 3-D input [b, s, d] with batch 1 and batch 3.
    model = make_model(33, 47, 21, activation=activation, bias=BIASES[bias], dtype=dtype, rank=3, seed=1)
    inferred = check(model)
    out_type = inferred.graph.output[0].type.tensor_type
    assert out_type.elem_type == (onnx.TensorProto.FLOAT if dtype == "float32" else onnx.TensorProto.FLOAT16)
    assert [d.dim_param or d.dim_value for d in out_type.shape.dim] == ["dim0", "dim1", 21]
    rng = np.random.default_rng(2)
    for level_name, level in LEVELS.items():
        sess = session(model, level)
        for shape in [(1, 1, 33), (3, 7, 33)]:
            x = rng.standard_normal(shape).astype(dtype)
            (y,) = sess.run(None, {"x": x})
            assert y.dtype == np.dtype(dtype)
            assert_close(y, reference(model, x, activation), dtype, f"{activation}/{bias}/{level_name}/{shape}")


@pytest.mark.parametrize("onnx_opset", [15, 17, 18, 20, 23])
def test_function_across_opsets(onnx_opset, assert_close):
    """Split changes form at opset 18 (num_outputs); CastLike needs 15."""
    model = make_model(24, 40, activation="gelu", bias=True, rank=2, onnx_opset=onnx_opset)
    check(model)
    x = np.random.default_rng(0).standard_normal((1, 24)).astype(np.float32)
    (y,) = session(model).run(None, {"x": x})
    assert_close(y, reference(model, x, "gelu"), "float32")


def test_old_opset_refused():
    with pytest.raises(ValueError, match="opset >= 15"):
        make_model(8, 8, onnx_opset=14)


def test_tolerance_separates_activations():
    """The fp32 comparison can tell gelu from gelu_tanh and silu from none: the tests above can fail."""
    model = make_model(33, 47, 21, activation="gelu", bias=True, rank=2, seed=1)
    x = np.random.default_rng(2).standard_normal((5, 33)).astype(np.float32) * 3
    gelu, gelu_tanh = reference(model, x, "gelu"), reference(model, x, "gelu_tanh")
    assert np.abs(gelu - gelu_tanh).max() > 3 * 2e-5 * max(1.0, np.abs(gelu).max())
    (y,) = session(model).run(None, {"x": x})
    assert np.abs(y - gelu_tanh).max() > np.abs(y - gelu).max() * 50


def test_node_builder_slots_and_types():
    x = ir.Value(name="x", shape=ir.Shape(["b", "s", 16]), type=ir.TensorType(ir.DataType.FLOAT16))
    wgu = ir.Value(name="wgu", shape=ir.Shape([16, 20]), type=ir.TensorType(ir.DataType.FLOAT16))
    wd = ir.Value(name="wd", shape=ir.Shape([10, 12]), type=ir.TensorType(ir.DataType.FLOAT16))
    bd = ir.Value(name="bd", shape=ir.Shape([12]), type=ir.TensorType(ir.DataType.FLOAT16))
    node = gated_mlp_node(x, wgu, wd, activation="relu", b_down=bd, name="mlp")
    assert (node.domain, node.op_type, node.overload) == ("mlpdeploy", "GatedMLP", "relu_bgu_bd")
    zero = node.inputs[3]
    assert list(node.inputs) == [x, wgu, wd, zero, bd]
    assert zero.name == "mlp_b_gate_up_zero" and zero.dtype == ir.DataType.FLOAT16
    assert zero.const_value.numpy().shape == (20,) and not zero.const_value.numpy().any()
    assert {k: a.value for k, a in node.attributes.items()} == {
        "activation": "relu",
        "plugin_namespace": "mlpdeploy",
        "plugin_version": "1",
    }
    out = node.outputs[0]
    assert out.dtype == ir.DataType.FLOAT16 and list(out.shape) == ["b", "s", 12]
    assert len(gated_mlp_node(x, wgu, wd, activation="silu").inputs) == 3
    with pytest.raises(ValueError, match="unknown GatedMLP activation"):
        gated_mlp_node(x, wgu, wd, activation="swish")


def test_overload_names_are_distinct():
    names = {overload_name(a, g, d) for a in ACTIVATIONS for g, d in [(False, False), (True, False), (True, True)]}
    assert len(names) == len(ACTIVATIONS) * 3
    with pytest.raises(ValueError, match="b_gate_up too"):
        overload_name("silu", False, True)


def test_lone_b_down_gets_registered_zero_b_gate_up(assert_close):
    model = make_model(16, 12, activation="silu", bias=(False, True))
    node = next(iter(model.graph))
    assert node.overload == "silu_bgu_bd" and len(node.inputs) == 5
    assert node.inputs[3].name in model.graph.initializers
    check(model)
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    (y,) = session(model).run(None, {"x": x})
    assert_close(y, reference(model, x, "silu"), "float32")


def test_node_without_static_weight_shape_cannot_take_lone_b_down():
    x = ir.Value(name="x", shape=ir.Shape(["b", 8]), type=ir.TensorType(ir.DataType.FLOAT))
    wgu = ir.Value(name="wgu", type=ir.TensorType(ir.DataType.FLOAT))
    wd = ir.Value(name="wd", shape=ir.Shape([4, 8]), type=ir.TensorType(ir.DataType.FLOAT))
    bd = ir.Value(name="bd", shape=ir.Shape([8]), type=ir.TensorType(ir.DataType.FLOAT))
    with pytest.raises(ValueError, match="static shape and dtype"):
        gated_mlp_node(x, wgu, wd, activation="silu", b_down=bd)


def _two_variant_model() -> tuple[ir.Model, list[ir.Node], dict[str, np.ndarray]]:
    """x → GatedMLP(relu) → GatedMLP(silu, b_down): two overloads of one function name in one model."""
    rng = np.random.default_rng(5)
    arrays = {
        "w1": rng.standard_normal((8, 12)) * 0.4, "d1": rng.standard_normal((6, 8)) * 0.4,
        "w2": rng.standard_normal((8, 12)) * 0.4, "d2": rng.standard_normal((6, 8)) * 0.4,
        "bd": rng.standard_normal((8,)) * 0.4,
    }
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    init = {
        k: ir.Value(name=k, shape=ir.Shape(v.shape), type=ir.TensorType(ir.DataType.FLOAT), const_value=ir.tensor(v, name=k))
        for k, v in arrays.items()
    }
    x = ir.Value(name="x", shape=ir.Shape(["b", 8]), type=ir.TensorType(ir.DataType.FLOAT))
    n1 = gated_mlp_node(x, init["w1"], init["d1"], activation="relu", name="first")
    n2 = gated_mlp_node(n1.outputs[0], init["w2"], init["d2"], activation="silu", b_down=init["bd"], name="second")
    n2.outputs[0].name = "y"
    graph = ir.Graph([x], n2.outputs, nodes=[n1, n2], initializers=list(init.values()), opset_imports={"": 20}, name="g")
    model = ir.Model(graph, ir_version=10)
    for node in (n1, n2):
        ensure_function(model, node)
        ensure_function(model, node)  # idempotent
    return model, [n1, n2], arrays


def _two_variant_reference(arrays, x):
    t = {k: torch.from_numpy(v) for k, v in arrays.items()}
    h = gated_mlp(torch.from_numpy(x), t["w1"], t["d1"], activation="relu")
    return gated_mlp(h, t["w2"], t["d2"], None, t["bd"], activation="silu").numpy()


def test_ort_resolves_overloads(assert_close):
    model, _, arrays = _two_variant_model()
    assert sorted(model.functions) == [("mlpdeploy", "GatedMLP", "relu"), ("mlpdeploy", "GatedMLP", "silu_bgu_bd")]
    assert model.opset_imports["mlpdeploy"] == 1
    check(model)
    x = np.random.default_rng(6).standard_normal((3, 8)).astype(np.float32)
    ref = _two_variant_reference(arrays, x)
    for level in LEVELS.values():
        (y,) = session(model, level).run(None, {"x": x})
        assert_close(y, ref, "float32")


def test_ort_follows_overload_not_name():
    """Point the relu node at a silu body: ONNX Runtime must run the body its overload names."""
    model, (first, _), arrays = _two_variant_model()
    ensure_function_for = make_model(8, 6, 8, activation="silu")  # a model whose function is GatedMLP:silu
    silu_fn = ensure_function_for.functions[("mlpdeploy", "GatedMLP", "silu")]
    model.functions[silu_fn.identifier()] = silu_fn
    first.overload = "silu"
    x = np.random.default_rng(6).standard_normal((3, 8)).astype(np.float32)
    (y,) = session(model).run(None, {"x": x})
    assert np.abs(y - _two_variant_reference(arrays, x)).max() > 1e-3


def test_function_body_form(assert_close):
    model, _, arrays = _two_variant_model()
    assert [n.name for n in plugin_nodes(model)] == ["first", "second"]
    function_body_form(model)
    assert plugin_nodes(model) == []
    assert [n.op_type for n in model.graph] == ["GatedMLP_relu", "GatedMLP_silu_bgu_bd"]
    assert all(n.overload == "" for n in model.graph)
    assert sorted(model.functions) == [("mlpdeploy", "GatedMLP_relu", ""), ("mlpdeploy", "GatedMLP_silu_bgu_bd", "")]
    function_body_form(model)  # idempotent
    check(model)
    x = np.random.default_rng(6).standard_normal((2, 8)).astype(np.float32)
    (y,) = session(model).run(None, {"x": x})
    assert_close(y, _two_variant_reference(arrays, x), "float32")


def _rtx_parse(model: ir.Model):
    trt = pytest.importorskip("tensorrt_rtx_bindings")
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(ir.to_proto(model).SerializeToString())
    errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
    layers = [network.get_layer(i).type.name for i in range(network.num_layers)]
    return ok, errors, layers


def test_tensorrt_rtx_parses_function_body_form():
    model, _, _ = _two_variant_model()
    function_body_form(model)
    ok, errors, layers = _rtx_parse(model)
    assert ok and not errors, errors
    assert layers.count("MATRIX_MULTIPLY") == 4  # two GEMMs per inlined GatedMLP
    assert layers.count("ACTIVATION") == 2  # relu, and silu's sigmoid


def test_tensorrt_rtx_ignores_overloads():
    """Why function_body_form renames: TensorRT's parser keys local functions by name only."""
    model, nodes, _ = _two_variant_model()
    for node in nodes:
        for attr in ("plugin_namespace", "plugin_version"):
            node.attributes.pop(attr)
    ok, errors, _ = _rtx_parse(model)
    assert not ok and any("second" in e for e in errors), errors


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_tensorrt_rtx_parses_each_variant(activation, dtype):
    model = make_model(32, 48, activation=activation, bias=(False, True), dtype=dtype, rank=3)
    function_body_form(model)
    ok, errors, layers = _rtx_parse(model)
    assert ok and not errors, errors
    assert layers.count("MATRIX_MULTIPLY") == 2


def test_function_body_form_refuses_empty_slot():
    model = make_model(8, 8, activation="silu", bias=True)
    node = next(iter(model.graph))
    node.replace_input_with(3, None)
    with pytest.raises(ValueError, match="empty input slot"):
        function_body_form(model)
    with pytest.raises(ValueError, match="no empty slot"):
        ensure_function(model, node)


def test_ensure_function_rejects_mismatched_overload():
    model = make_model(8, 8, activation="silu")
    node = next(iter(model.graph))
    node.overload = "relu"
    with pytest.raises(ValueError, match="overload"):
        ensure_function(model, node)
