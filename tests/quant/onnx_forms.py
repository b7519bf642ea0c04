"""Tiny ONNX graphs that decode a QuantizedWeight with standard DequantizeLinear, run by
onnx.reference: the independent oracle the codecs are cross-checked against bit for bit."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from mlpdeploy.quant import QuantizedWeight, signed_int4


def _tensor(name: str, array: np.ndarray, onnx_type: int | None = None):
    if onnx_type is None:
        return numpy_helper.from_array(array, name)
    packed = array.astype(np.uint8) if onnx_type != TensorProto.FLOAT8E4M3FN else array
    if onnx_type in (TensorProto.FLOAT4E2M1, TensorProto.INT4, TensorProto.UINT4):
        flat = (packed.reshape(-1) & 0xF).astype(np.uint8)
        if flat.size % 2:
            flat = np.concatenate([flat, np.zeros(1, np.uint8)])
        raw = (flat[0::2] | (flat[1::2] << 4)).tobytes()
    else:
        raw = packed.astype(np.uint8).tobytes()
    return helper.make_tensor(name, onnx_type, list(array.shape), raw, raw=True)


def reference_dequantize(q: QuantizedWeight) -> np.ndarray:
    """[K, N] float32 as onnx.reference's DequantizeLinear computes it from q's codes and scales."""
    k, block = q.k, q.block
    codes = q.codes[:k]
    nodes, inits = [], []
    name = q.format.name
    if name == "nvfp4":
        inits += [_tensor("w", codes, TensorProto.FLOAT4E2M1), _tensor("s8", q.scales, TensorProto.FLOAT8E4M3FN),
                  numpy_helper.from_array(np.array(q.global_scale, np.float32), "s2")]
        nodes += [helper.make_node("DequantizeLinear", ["s8", "s2"], ["sb"]),
                  helper.make_node("DequantizeLinear", ["w", "sb"], ["y"], axis=0, block_size=block)]
    elif name == "mxfp4":
        # E8M0 has no DequantizeLinear in onnx.reference: its exact decode 2^(code-127) feeds the FP4 DQ
        scale = np.ldexp(1.0, q.scales.astype(np.int32) - 127).astype(np.float32)
        inits += [_tensor("w", codes, TensorProto.FLOAT4E2M1), numpy_helper.from_array(scale, "sb")]
        nodes.append(helper.make_node("DequantizeLinear", ["w", "sb"], ["y"], axis=0, block_size=block))
    elif name == "int8":
        inits += [numpy_helper.from_array(codes.view(np.int8), "w"), numpy_helper.from_array(q.scales, "sb")]
        nodes.append(helper.make_node("DequantizeLinear", ["w", "sb"], ["y"], axis=0, block_size=block))
    elif name == "int4":
        inits += [_tensor("w", codes, TensorProto.INT4), numpy_helper.from_array(q.scales, "sb")]
        nodes.append(helper.make_node("DequantizeLinear", ["w", "sb"], ["y"], axis=0, block_size=block))
    else:
        inits += [_tensor("w", codes, TensorProto.UINT4), numpy_helper.from_array(q.scales, "sb"),
                  _tensor("zp", q.zero_points, TensorProto.UINT4)]
        nodes.append(helper.make_node("DequantizeLinear", ["w", "sb", "zp"], ["y"], axis=0, block_size=block))
    graph = helper.make_graph(nodes, "dq", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    return ReferenceEvaluator(model).run(None, {})[0]


def reference_quantize_int4(w: np.ndarray, q: QuantizedWeight) -> np.ndarray:
    """onnx.reference QuantizeLinear of w with q's scales (and zero points): the codes it makes
    (INT4/UINT4; INT8 for int8, as its two's-complement bytes)."""
    k = q.k
    symmetric = q.format.name in ("int4", "int8")
    inputs = [numpy_helper.from_array(np.asarray(w, np.float32), "x"), numpy_helper.from_array(q.scales, "s")]
    names = ["x", "s"]
    if q.format.name == "int8":
        inputs.append(numpy_helper.from_array(np.zeros(q.scales.shape, np.int8), "zp"))
        node = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"], axis=0, block_size=q.block)
        graph = helper.make_graph([node], "q", [], [helper.make_tensor_value_info("y", TensorProto.INT8, None)], inputs)
        out = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])).run(None, {})[0]
        return np.asarray(out, np.int8)[:k].view(np.uint8)
    if symmetric:
        inputs.append(_tensor("zp", np.zeros(q.scales.shape, np.uint8), TensorProto.INT4))
    else:
        inputs.append(_tensor("zp", q.zero_points, TensorProto.UINT4))
    names.append("zp")
    node = helper.make_node("QuantizeLinear", names, ["y"], axis=0, block_size=q.block)
    graph = helper.make_graph([node], "q", [], [helper.make_tensor_value_info("y", TensorProto.INT4 if symmetric else TensorProto.UINT4, None)], inputs)
    out = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])).run(None, {})[0]
    values = out.astype(np.int16)[:k]
    return (values & 0xF).astype(np.uint8) if symmetric else values.astype(np.uint8)


def ml_dtypes_e2m1(values: np.ndarray) -> np.ndarray:
    return values.astype(ml_dtypes.float4_e2m1fn).view(np.uint8) & 0xF


__all__ = ["ml_dtypes_e2m1", "reference_dequantize", "reference_quantize_int4", "signed_int4"]
