"""mlpdeploy/contract.py, the one home of the facts every floor shares: the code tables against
ml_dtypes, the cache names against what the export and the passes use, TensorRT's type names
against its bindings, bfloat16 through numpy — and the int4 block sizes, once two lists that
disagreed (quant allowed 32/64/128, the W4A16 op 16–128), settled by running every size in every
form that takes it: the codec, MatMulNBits and blocked DequantizeLinear (quantize-weights, in
ONNX Runtime), and a TensorRT-RTX build."""

from __future__ import annotations

import importlib.util

import ml_dtypes
import numpy as np
import onnx_ir as ir
import pytest
import torch

from mlpdeploy import contract
from mlpdeploy.errors import OpError
from mlpdeploy.passes import PassSpec, run_pipeline
from mlpdeploy.plugins.w4a16_matmul.reference import check_format
from mlpdeploy.quant import QuantError, make_format


def test_code_tables_are_ml_dtypes_own():
    e2m1 = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    assert np.array_equal(contract.E2M1_VALUES, e2m1) and np.array_equal(np.signbit(contract.E2M1_VALUES), np.signbit(e2m1))
    e4m3 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float32)
    assert np.array_equal(contract.E4M3_VALUES, e4m3, equal_nan=True)
    e8m0 = np.arange(256, dtype=np.uint8).view(ml_dtypes.float8_e8m0fnu).astype(np.float32)
    assert np.array_equal(contract.E8M0_VALUES, e8m0, equal_nan=True)
    assert contract.E2M1_MAX == e2m1.max() and contract.E4M3_MAX == np.nanmax(e4m3)
    assert np.array_equal(contract.INT4_VALUES, np.arange(16, dtype=np.uint8).view(np.int8).astype(np.float32) - 16 * (np.arange(16) >= 8))


BLOCKS = sorted({b for blocks in contract.WEIGHT_BLOCKS.values() for b in blocks} | {8, 48, 256})


@pytest.mark.parametrize("fmt", contract.WEIGHT_FORMATS)
def test_every_consumer_takes_exactly_the_contracts_blocks(fmt):
    """The codec (mlpdeploy.quant) and the W4A16MatMul op accept the same sizes: the contract's."""
    for block in BLOCKS:
        allowed = block in contract.WEIGHT_BLOCKS[fmt]
        for check, error in ((make_format, QuantError), (check_format, OpError)):
            if allowed:
                check(fmt, block)
            else:
                with pytest.raises(error):
                    check(fmt, block)
    assert contract.DEFAULT_BLOCK[fmt] in contract.WEIGHT_BLOCKS[fmt]


def linear(k: int, n: int) -> tuple[ir.Model, np.ndarray]:
    rng = np.random.default_rng(k)
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = ir.val("x", ir.DataType.FLOAT, ["batch", k])
    node = ir.node("MatMul", [x, ir.Value(name="w", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([k, n]), const_value=ir.tensor(w, name="w"))],
                   name="proj", metadata_props={"pkg.torch.onnx.name_scopes": "['', 'proj']"})
    node.outputs[0].name, node.outputs[0].dtype = "y", ir.DataType.FLOAT
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=[node.inputs[1]], opset_imports={"": contract.DEFAULT_OPSET})
    return ir.Model(graph, ir_version=contract.IR_VERSION), w


@pytest.mark.parametrize("fmt", ["int4", "int4asym"])
@pytest.mark.parametrize("block", contract.WEIGHT_BLOCKS["int4"])
@pytest.mark.parametrize("form", [{"accuracy_level": 0}, {"target": "trt"}])
def test_every_int4_block_runs_in_onnx_runtime(fmt, block, form):
    """MatMulNBits (ort) and blocked DequantizeLinear (trt; symmetric only) at every block size: ONNX
    Runtime computes x · decode(codes), K=97 (a partial last block) and batch 3."""
    import onnxruntime as ort

    if fmt == "int4asym" and form.get("target") == "trt":
        pytest.skip("TensorRT takes no INT4 zero points (quantize-weights refuses it; tested there)")
    model, w = linear(97, 13)
    (report,) = run_pipeline(model, [PassSpec("quantize-weights", {"format": fmt, "block": block, **form})])
    assert report["rewritten"] == 1 and report["sites"]["proj"]["format"] == str(make_format(fmt, block))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, 97)).astype(np.float32)
    expected = x.astype(np.float64) @ make_format(fmt, block).quantize(w).dequantize().astype(np.float64)
    assert np.abs(session.run(None, {"x": x})[0] - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx_bindings") is None, reason="the rtx extra is not installed")
def test_tensorrt_rtx_builds_int4_at_the_smallest_block(tmp_path):
    """Block 16 (the size the codec did not allow before) parses and builds ahead of time for sm89."""
    from mlpdeploy.backends import get_backend
    from mlpdeploy.backends.tensorrt.options import RTXOptions
    from mlpdeploy.onnx_io import write_onnx

    model, _ = linear(96, 40)
    run_pipeline(model, [PassSpec("quantize-weights", {"format": "int4", "block": 16, "target": "trt"})])
    write_onnx(model, tmp_path / "m.onnx")
    built = get_backend("tensorrt-rtx").build(tmp_path / "m.onnx", tmp_path / "m.engine", RTXOptions(target="sm89", cache=False))
    assert built.info["bytes"] > 1000 and any("DequantizeLinear" in " ".join(layer["onnx_nodes"]) for layer in built.info["layers"])


def test_cache_names_are_the_exports_and_the_passes():
    from mlpdeploy.model.kv_cache import CacheLayout

    layout = CacheLayout(layers=[0, 3], kv_heads=1, head_dim=2, max_positions=8)
    assert layout.input_names(3) == ("past_key_values.3.key", "past_key_values.3.value") == contract.cache_input_names(3)
    assert layout.output_names(3) == ("present.3.key", "present.3.value") == contract.cache_output_names(3)
    assert contract.CACHE_INPUT.fullmatch(layout.input_names(3)[1]).groups() == ("3", "value")
    assert contract.CACHE_OUTPUT.fullmatch(layout.output_names(0)[0]).groups() == ("0", "key")
    assert contract.cache_printf(contract.PAST_TEMPLATE, "key") == "past_key_values.%d.key"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx_bindings") is None, reason="the rtx extra is not installed")
def test_tensorrt_dtype_names_are_its_own():
    import tensorrt_rtx_bindings as trt

    for name, dtype in contract.TRT_DTYPES.items():
        assert hasattr(trt.DataType, name), name
        assert contract.numpy_dtype(dtype).name == dtype


def test_bfloat16_crosses_into_numpy_with_its_bits():
    t = torch.tensor([1.0, -2.5, 3.140625], dtype=torch.bfloat16)
    array = contract.tensor_to_numpy(t)
    assert array.dtype == contract.numpy_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16)
    assert np.array_equal(array.view(np.int16), t.view(torch.int16).numpy()) and array.astype(np.float32).tolist() == [1.0, -2.5, 3.140625]
    assert contract.tensor_to_numpy(torch.ones(2)).dtype == np.float32


def test_ir_versions():
    assert contract.ir_version_for(contract.DEFAULT_OPSET) == contract.IR_VERSION
    assert contract.ir_version_for(contract.FLOAT4_OPSET) == contract.FLOAT4_IR_VERSION
    assert contract.ir_version_for(contract.BLOCKED_DQ_OPSET, current=11) == 11
