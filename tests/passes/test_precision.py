"""fp16/bf16 graph conversion: which ops run low, which stay fp32, I/O types kept, numerics in ORT."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.passes.precision import convert_precision, emulate_in_fp32

F32, F16, BF16 = ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16


def _init(name, array) -> ir.Value:
    array = np.asarray(array)
    return ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), const_value=ir.tensor(array, name=name))


def _block(d: int = 8, h: int = 16, scale: float = 1.0) -> ir.Model:
    """x -> RMS-style norm (Pow, ReduceMean, Sqrt, Reciprocal) -> MatMul -> Relu -> Mul 0.5 -> MatMul -> +x -> Softmax."""
    rng = np.random.default_rng(0)
    x = ir.Value(name="x", shape=ir.Shape(["batch", d]), type=ir.TensorType(F32))
    w1 = _init("w1", (rng.standard_normal((d, h)) * scale).astype(np.float32))
    w2 = _init("w2", (rng.standard_normal((h, d)) * 0.3).astype(np.float32))
    two, half, eps = _init("two", np.float32(2.0)), _init("half", np.float32(0.5)), _init("eps", np.float32(1e-6))
    axes = _init("axes", np.array([-1], np.int64))
    nodes = []

    def op(op_type, *inputs, name, **attrs):
        node = ir.node(op_type, list(inputs), attrs or None, name=name)
        node.outputs[0].name = name
        nodes.append(node)
        return node.outputs[0]

    sq = op("Pow", x, two, name="sq")
    mean = op("ReduceMean", sq, axes, name="mean")
    rms = op("Sqrt", op("Add", mean, eps, name="mean_eps"), name="rms")
    normed = op("Mul", x, op("Reciprocal", rms, name="inv"), name="normed")
    hidden = op("Mul", op("Relu", op("MatMul", normed, w1, name="up"), name="act"), half, name="scaled")
    out = op("Add", op("MatMul", hidden, w2, name="down"), x, name="residual")
    y = op("Softmax", out, name="y", axis=-1)
    y.shape = ir.Shape(["batch", d])
    graph = ir.Graph([x], [y], nodes=nodes, initializers=[w1, w2, two, half, eps, axes], opset_imports={"": 20}, name="g")
    model = ir.Model(graph, ir_version=10)
    for node in graph:  # the types an exporter would have recorded
        node.outputs[0].dtype = F32
    return model


def _run(model: ir.Model, feeds: dict) -> list[np.ndarray]:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _dtypes(model: ir.Model) -> dict[str, ir.DataType]:
    return {n.name: n.outputs[0].dtype for n in model.graph if n.name}


FEEDS = {"x": np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)}


@pytest.mark.parametrize("precision, low", [("fp16", F16), ("bf16", BF16)])
def test_autocast_rules(precision, low):
    model = _block()
    report = convert_precision(model, precision)
    dtypes = _dtypes(model)
    # matrix products and what runs between them are low; the norm, the residual and Softmax fp32
    assert dtypes["up"] == dtypes["act"] == dtypes["scaled"] == dtypes["down"] == low
    assert dtypes["sq"] == dtypes["mean"] == dtypes["rms"] == dtypes["inv"] == dtypes["normed"] == F32
    assert dtypes["residual"] == dtypes["y"] == F32
    # weights are stored low; the scalar 0.5 follows the op it feeds; I/O types are kept
    assert model.graph.initializers[f"w1.{precision}"].const_value.dtype == low
    assert "w1" not in model.graph.initializers
    assert model.graph.initializers[f"half.{precision}"].const_value.dtype == low
    assert model.graph.inputs[0].dtype == F32 and model.graph.outputs[0].dtype == F32
    assert report.fp32_nodes == {"Pow": 1, "ReduceMean": 1, "Sqrt": 1, "Reciprocal": 1, "Softmax": 1}
    assert report.low_nodes == 2 and report.converted_initializers == 3
    # casts: x down into `up`, `down` up into the residual add
    assert report.casts == 2 and sum(n.op_type == "Cast" for n in model.graph) == 2


def test_fp16_runs_in_onnxruntime_close_to_fp32():
    reference = _run(_block(), FEEDS)[0]
    model = _block()
    convert_precision(model, "fp16")
    (out,) = _run(model, FEEDS)
    assert out.dtype == np.float32
    assert 0 < np.abs(out - reference).max() < 2e-3


def test_bf16_emulation_rounds_like_bf16():
    """y = x @ W in bf16, emulated in fp32, equals numpy with bf16 rounding of x, W and y."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 4)).astype(np.float32)
    x = ir.Value(name="x", shape=ir.Shape([3, 8]), type=ir.TensorType(F32))
    node = ir.node("MatMul", [x, _init("w", w)], name="mm")
    node.outputs[0].name, node.outputs[0].dtype = "y", F32
    model = ir.Model(ir.Graph([x], node.outputs, nodes=[node], initializers=[node.inputs[1]], opset_imports={"": 20}, name="g"), ir_version=10)
    convert_precision(model, "bf16")
    assert emulate_in_fp32(model) == 2  # the input cast and the MatMul output
    (out,) = _run(model, FEEDS)
    bf = lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float32)  # noqa: E731
    expected = bf(bf(FEEDS["x"]) @ bf(w))
    assert np.abs(out - expected).max() <= np.abs(expected).max() * 2**-7  # within one bf16 ulp
    assert not np.array_equal(out, FEEDS["x"] @ w)  # it did round


def test_fp16_saturates_constants_beyond_its_range():
    model = _block(scale=1.0)
    model.graph.initializers["w1"].const_value = ir.tensor(np.full((8, 16), 1e6, np.float32), name="w1")
    assert convert_precision(model, "fp16").saturated_values == 8 * 16
    assert np.isfinite(model.graph.initializers["w1.fp16"].const_value.numpy()).all()
    model = _block()
    model.graph.initializers["w1"].const_value = ir.tensor(np.full((8, 16), 1e6, np.float32), name="w1")
    assert convert_precision(model, "bf16").saturated_values == 0


def test_fp32_is_a_no_op_and_unknown_precision_is_an_error():
    model = _block()
    before = ir.to_proto(model).SerializeToString()
    convert_precision(model, "fp32")
    assert ir.to_proto(model).SerializeToString() == before
    with pytest.raises(MlpdeployError, match="unknown precision 'int3'; choose one of fp32, fp16, bf16"):
        convert_precision(model, "int3")


def test_control_flow_is_refused():
    model = _block()
    cond = _init("cond", np.array(True))
    branch = ir.Graph([], [], nodes=[], name="branch")
    node = ir.node("If", [cond], {"then_branch": branch, "else_branch": branch}, name="the_if", num_outputs=0)
    model.graph.register_initializer(cond)
    model.graph.append(node)
    with pytest.raises(MlpdeployError, match="node 'the_if' \\(If\\) has subgraphs.*--precision fp32"):
        convert_precision(model, "fp16")


def test_constant_only_dequantize_feeding_a_matmul_is_low_without_a_cast():
    """DQ(int8 W, scale) -> MatMul: the scale is stored low so DQ feeds the GEMM directly (as TensorRT fuses it)."""
    x = ir.Value(name="x", shape=ir.Shape([2, 8]), type=ir.TensorType(F32))
    q = _init("wq", np.random.default_rng(3).integers(-8, 8, (8, 4)).astype(np.int8))
    scale = _init("scale", np.array(0.05, np.float32))
    dq = ir.node("DequantizeLinear", [q, scale], name="dq")
    dq.outputs[0].dtype = F32
    mm = ir.node("MatMul", [x, dq.outputs[0]], name="mm")
    mm.outputs[0].name, mm.outputs[0].dtype = "y", F32
    model = ir.Model(ir.Graph([x], mm.outputs, nodes=[dq, mm], initializers=[q, scale], opset_imports={"": 21}, name="g"), ir_version=10)
    convert_precision(model, "fp16")
    assert dq.outputs[0].dtype == F16 and mm.inputs[1] is dq.outputs[0]
    assert model.graph.initializers["scale.fp16"].const_value.dtype == F16
    reference = FEEDS["x"][:2] @ (q.const_value.numpy().astype(np.float32) * 0.05)
    (out,) = _run(model, {"x": FEEDS["x"][:2]})
    assert np.abs(out - reference).max() < 1e-2


def test_resize_scales_keep_their_type():
    x = ir.Value(name="x", shape=ir.Shape([1, 1, 4, 4]), type=ir.TensorType(F32))
    w = _init("w", np.ones((4, 4), np.float32))
    mm = ir.node("MatMul", [x, w], name="mm")
    mm.outputs[0].dtype = F32
    scales = _init("scales", np.array([1, 1, 2, 2], np.float32))
    resize = ir.node("Resize", [mm.outputs[0], None, scales], {"mode": "nearest"}, name="resize")
    resize.outputs[0].name, resize.outputs[0].dtype, resize.outputs[0].shape = "y", F32, ir.Shape([1, 1, 8, 8])
    model = ir.Model(ir.Graph([x], resize.outputs, nodes=[mm, resize], initializers=[w, scales], opset_imports={"": 20}, name="g"), ir_version=10)
    convert_precision(model, "fp16")
    assert resize.inputs[2] is scales and resize.outputs[0].dtype == F16
    (out,) = _run(model, {"x": np.ones((1, 1, 4, 4), np.float32)})
    assert out.shape == (1, 1, 8, 8) and np.allclose(out, 4.0)


def test_gated_mlp_function_is_inlined_and_runs_low():
    """In function-body form (as TensorRT-RTX gets it) the body is inlined and its constants follow fp16."""
    from mlpdeploy.plugins.forms import function_body_form
    from mlpdeploy.plugins.gated_mlp.onnx_function import make_model

    feeds = {"x": np.random.default_rng(4).standard_normal((5, 16)).astype(np.float32)}
    for activation in ("silu", "gelu"):
        reference = _run(make_model(16, 32, activation=activation, bias=True), feeds)[0]
        model = make_model(16, 32, activation=activation, bias=True)
        function_body_form(model)
        report = convert_precision(model, "fp16")
        assert report.inlined_functions == 1 and not model.functions
        assert not report.fp32_nodes  # the whole MLP runs in fp16, its constants included
        assert {n.outputs[0].dtype for n in model.graph if n.op_type in ("MatMul", "Mul", "Add")} == {F16}
        (out,) = _run(model, feeds)
        assert 0 < np.abs(out - reference).max() < 1e-2


@pytest.mark.parametrize("precision, tol", [("fp16", 2e-3), ("bf16", 3e-2)])
def test_fixture_model_within_tolerance(tiny_export, precision, tol):
    model = ir.load(tiny_export.model_path)
    feeds = {"input_ids": np.random.default_rng(0).integers(0, 50, (3, 11)).astype(np.int64)}
    reference = _run(ir.load(tiny_export.model_path), feeds)[0]
    convert_precision(model, precision)
    if precision == "bf16":
        emulate_in_fp32(model)
    (out,) = _run(model, feeds)
    assert 0 < np.abs(out - reference).max() < tol


def test_plugin_nodes_are_kept_and_fed_low():
    """In plugin form (datacenter TensorRT) the node stays, its function stays, and it is fed fp16."""
    from mlpdeploy.plugins.gated_mlp.onnx_function import make_model

    model = make_model(16, 32, activation="silu")
    report = convert_precision(model, "fp16")
    (node,) = [n for n in model.graph if n.domain == "mlpdeploy"]
    assert report.inlined_functions == 0 and len(model.functions) == 1
    assert node.attributes["plugin_namespace"].as_string() == "mlpdeploy"
    assert [v.dtype for v in node.inputs] == [F16, F16, F16] and node.outputs[0].dtype == F16
    assert model.graph.outputs[0].dtype == F32
