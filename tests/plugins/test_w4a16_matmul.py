"""W4A16MatMul: the torch reference decodes exactly what mlpdeploy.quant encodes (bit for bit),
the ONNX function body matches the reference in ONNX Runtime, the TensorRT plugin's rules."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch

from mlpdeploy.errors import OpError
from mlpdeploy.plugins import trt_plugin_base
from mlpdeploy.plugins.w4a16_matmul import trt_plugin
from mlpdeploy.plugins.w4a16_matmul.onnx_function import build_function, make_model, model_from_arrays, w4a16_matmul_node
from mlpdeploy.plugins.w4a16_matmul.reference import dequantize, w4a16_matmul
from mlpdeploy.quant import column_blobs, parse_format

SPECS = ["nvfp4", "mxfp4", "int4", "int4-16", "int4-64", "int4-128", "int4asym", "int4asym-16", "int4asym-128"]


def storage(spec: str, k: int, n: int, seed: int = 0, scale: float = 1.0):
    """A random [K, N] weight quantized by mlpdeploy.quant, as the op's inputs; and the codec's object."""
    w = (np.random.default_rng(seed).standard_normal((k, n)) * scale).astype(np.float32)
    q = parse_format(spec).quantize(w)
    arrays = {"packed": column_blobs(q.codes, q.block), "scales": np.ascontiguousarray(q.scales.T)}
    if q.format.name == "nvfp4":
        arrays["global_scale"] = np.array([q.global_scale], np.float32)
    if q.format.name == "int4asym":
        arrays["zero_points"] = np.ascontiguousarray(q.zero_points.T)
    return arrays, q


def torch_inputs(arrays):
    tensors = [torch.from_numpy(a) for a in arrays.values()]
    return tensors + [None] * (3 - len(tensors))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize(("k", "n"), [(1, 1), (16, 3), (37, 5), (344, 40), (131, 17)])
def test_reference_decodes_the_codec_bit_for_bit(spec, k, n):
    arrays, q = storage(spec, k, n, seed=k + n)
    packed, scales, extra = torch_inputs(arrays)
    w = dequantize(packed, scales, q.format.name, k, global_scale=extra if q.format.name == "nvfp4" else None,
                   zero_points=extra if q.format.name == "int4asym" else None)
    assert torch.equal(w.contiguous().view(torch.int32), torch.from_numpy(q.dequantize()).view(torch.int32))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize(("lead", "k", "n"), [((1,), 37, 5), ((3,), 344, 40), ((2, 7), 131, 17), ((1, 1), 16, 1)])
def test_function_body_matches_reference(spec, lead, k, n, ort_session):
    arrays, q = storage(spec, k, n, seed=n)
    model = model_from_arrays(arrays, fmt=q.format.name, k=k, rank=len(lead) + 1)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    x = np.random.default_rng(1).standard_normal((*lead, k)).astype(np.float32)
    y = ort_session(model).run(None, {"x": x})[0]
    ref = w4a16_matmul(torch.from_numpy(x), *torch_inputs(arrays), fmt=q.format.name).numpy()
    assert y.shape == (*lead, n)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(ref).max())))


@pytest.mark.parametrize("dtype", ["float16"])
def test_function_body_keeps_the_activation_type(dtype, ort_session):
    model = make_model(64, 8, fmt="mxfp4", dtype=dtype)
    y = ort_session(model).run(None, {"x": np.ones((2, 64), dtype)})[0]
    assert y.dtype == np.dtype(dtype) and np.isfinite(y).all()


def test_node_errors():
    x = ir.Value(name="x", shape=ir.Shape([2, 40]), type=ir.TensorType(ir.DataType.FLOAT))
    arrays, _ = storage("int4", 40, 3)
    values = [ir.Value(name=k, shape=ir.Shape(v.shape), type=ir.TensorType(ir.DataType.from_numpy(v.dtype)), const_value=ir.tensor(v))
              for k, v in arrays.items()]
    with pytest.raises(OpError, match="K=100 does not fit 2 blocks of 32"):
        w4a16_matmul_node(x, *values, fmt="int4", k=100)
    with pytest.raises(OpError, match="W4A16MatMul nvfp4 node None must have 4 inputs"):
        w4a16_matmul_node(x, *values, fmt="nvfp4", k=40)
    with pytest.raises(OpError, match="needs ONNX opset >= 18"):
        build_function("int4", 17)
    with pytest.raises(OpError, match="takes block sizes 16 or|takes block sizes 16, 32"):
        w4a16_matmul(torch.ones(2, 40), torch.zeros(3, 1, 24, dtype=torch.uint8), torch.ones(3, 1), fmt="int4")


# ---- TensorRT plugin rules (no TensorRT needed) and classes (TensorRT-RTX's bindings share the API)


def test_plugin_field_rules():
    fields = {"format": trt_plugin_base.encode_string("nvfp4"), "K": np.array([344], np.int32), "block_size": np.array([16], np.int32)}
    assert trt_plugin.decode_fields(fields) == {"fmt": "nvfp4", "k": 344, "block_size": 16}
    with pytest.raises(OpError, match="missing block_size"):
        trt_plugin.decode_fields({"format": b"int4", "K": [3]})
    with pytest.raises(OpError, match="unknown W4A16MatMul format 'fp8'"):
        trt_plugin.decode_fields({**fields, "format": b"fp8"})
    with pytest.raises(OpError, match="takes block sizes 32"):
        trt_plugin.decode_fields({**fields, "format": b"mxfp4"})


@pytest.mark.parametrize(("fmt", "pos", "types", "ok"), [
    ("nvfp4", 0, ["HALF"], True), ("nvfp4", 0, ["INT8"], False), ("nvfp4", 1, ["HALF", "UINT8"], True),
    ("nvfp4", 2, ["HALF", "UINT8", "UINT8"], True), ("nvfp4", 3, ["HALF", "UINT8", "UINT8", "FLOAT"], True),
    ("nvfp4", 4, ["HALF", "UINT8", "UINT8", "FLOAT", "HALF"], True), ("nvfp4", 4, ["HALF", "UINT8", "UINT8", "FLOAT", "FLOAT"], False),
    ("int4", 2, ["BF16", "UINT8", "FLOAT"], True), ("int4", 2, ["BF16", "UINT8", "UINT8"], False),
    ("int4asym", 3, ["FLOAT", "UINT8", "FLOAT", "UINT8"], True), ("mxfp4", 3, ["FLOAT", "UINT8", "UINT8", "FLOAT"], True),
])
def test_plugin_format_rule(fmt, pos, types, ok):
    assert trt_plugin.supports_combination(pos, types, [True] * len(types), fmt) is ok
    assert not trt_plugin.supports_combination(pos, types, [False] * len(types), fmt)


@pytest.fixture(scope="module")
def trt_api():
    if importlib.util.find_spec("tensorrt") is not None:
        return importlib.import_module("tensorrt")
    return pytest.importorskip("tensorrt_rtx_bindings")


def test_plugin_creation_and_serialization(trt_api):
    trt = trt_api
    creator = trt_plugin.make_creator(trt)
    assert (creator.name, creator.plugin_namespace) == ("W4A16MatMul", "mlpdeploy")
    assert [f.name for f in creator.field_names] == ["format", "K", "block_size"]
    collection = trt.PluginFieldCollection([
        trt.PluginField("format", trt_plugin_base.encode_string("mxfp4"), trt.PluginFieldType.CHAR),
        trt.PluginField("K", np.array([344], np.int32), trt.PluginFieldType.INT32),
        trt.PluginField("block_size", np.array([32], np.int32), trt.PluginFieldType.INT32),
    ])
    plugin = creator.create_plugin("w0", collection, trt.TensorRTPhase.BUILD)
    revived = creator.create_plugin("w0", plugin.get_fields_to_serialize(), trt.TensorRTPhase.RUNTIME)
    for p in (plugin, revived, plugin.clone()):
        assert (p.fmt, p.k, p.block_size) == ("mxfp4", 344, 32)
    assert plugin.get_output_data_types([trt.DataType.HALF, trt.DataType.UINT8, trt.DataType.UINT8]) == [trt.DataType.HALF]


def test_plugin_run_body_writes_the_output():
    """The enqueue body on torch tensors (Triton interpreter on CPU), into a given output."""
    pytest.importorskip("triton")
    from mlpdeploy.plugins.triton_common import kernel_device

    device = kernel_device()
    if device is None:
        pytest.skip("no CUDA device and the Triton interpreter is off")
    arrays, q = storage("nvfp4", 48, 6)
    packed, scales, extra = (t.to(device) for t in torch_inputs(arrays))
    x = torch.randn(3, 48, device=device)
    out = torch.full((3, 6), float("nan"), device=device)
    trt_plugin.run(x, packed, scales, extra, "nvfp4", out)
    torch.testing.assert_close(out.cpu(), w4a16_matmul(x.cpu(), packed.cpu(), scales.cpu(), extra.cpu(), "nvfp4"), atol=1e-5, rtol=1e-5)
