"""mlpdeploy's int4 is at least as accurate as ONNX Runtime's own MatMulNBitsQuantizer (RTN, block
32, symmetric, accuracy level 0) on the same real weights: SmolLM2's and all-MiniLM-L6-v2's first
layers. Both quantized graphs run in ONNX Runtime; feeding the identity matrix reads back the
weight each one computes with, and real-looking inputs give the output error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mlpdeploy.passes import PassSpec
from mlpdeploy.passes.pipeline import run_pipeline

safetensors = pytest.importorskip("safetensors.numpy")
quantizer = pytest.importorskip("onnxruntime.quantization.matmul_nbits_quantizer")

SMOLLM2 = ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.gate_proj.weight",
           "model.layers.0.mlp.down_proj.weight", "model.layers.3.mlp.down_proj.weight")
MINILM = ("encoder.layer.0.attention.self.query.weight", "encoder.layer.0.intermediate.dense.weight", "encoder.layer.0.output.dense.weight")


def _matmul_model(w_kn: np.ndarray) -> onnx.ModelProto:
    k, n = w_kn.shape
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")
    node.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'proj']")
    graph = helper.make_graph([node], "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], [numpy_helper.from_array(w_kn, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _ours(w_kn: np.ndarray) -> onnx.ModelProto:
    import onnx_ir as ir

    model = ir.from_proto(_matmul_model(w_kn))
    run_pipeline(model, [PassSpec("quantize-weights", {"format": "int4", "accuracy_level": "0", "scope": "*"})])
    assert [n.op_type for n in model.graph] == ["MatMulNBits"]
    return ir.to_proto(model)


def _onnxruntime(w_kn: np.ndarray) -> onnx.ModelProto:
    q = quantizer.MatMulNBitsQuantizer(_matmul_model(w_kn), block_size=32, is_symmetric=True, accuracy_level=0)
    q.process()
    assert [n.op_type for n in q.model.model.graph.node] == ["MatMulNBits"]
    return q.model.model


def _errors(w_kn: np.ndarray, x: np.ndarray) -> dict[str, tuple[float, float]]:
    """name → (relative squared weight error, relative squared output error on x)."""
    k = w_kn.shape[0]
    exact = x.astype(np.float64) @ w_kn.astype(np.float64)
    out = {}
    for name, model in (("ours", _ours(w_kn)), ("onnxruntime", _onnxruntime(w_kn))):
        decoded = _run(model, np.eye(k, dtype=np.float32)).astype(np.float64)  # row i: what x = e_i multiplies by
        y = _run(model, x).astype(np.float64)
        out[name] = (float(((decoded - w_kn) ** 2).sum() / (w_kn.astype(np.float64) ** 2).sum()),
                     float(((y - exact) ** 2).sum() / (exact ** 2).sum()))
    return out


@pytest.mark.parametrize("names, model", [(SMOLLM2, "smollm2"), (MINILM, "minilm")])
def test_int4_at_least_as_accurate_as_onnxruntime_quantizer(names, model, request):
    directory = request.getfixturevalue("smollm2_small" if model == "smollm2" else "minilm_dir")
    weights = safetensors.load_file(str(next(directory.glob("*.safetensors"))))
    rng = np.random.default_rng(0)
    totals = {"ours": [0.0, 0.0], "onnxruntime": [0.0, 0.0]}
    for name in names:
        key = name if name in weights else next(k for k in weights if k.endswith(name))
        w_kn = np.ascontiguousarray(weights[key].astype(np.float32).T)  # torch [out, in] -> [K, N]
        x = rng.standard_normal((16, w_kn.shape[0])).astype(np.float32)
        errors = _errors(w_kn, x)
        assert errors["ours"][0] <= errors["onnxruntime"][0], (name, errors)  # the weight, every matrix
        for side, (weight, output) in errors.items():
            totals[side][0] += weight
            totals[side][1] += output
    assert totals["ours"][1] <= totals["onnxruntime"][1], totals  # the outputs, all matrices together
