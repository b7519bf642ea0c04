"""FP4 weights in a graph ONNX Runtime must run: TensorRT engines are validated by running the
parsed graph in ONNX Runtime (and per-layer checks run the rewritten graph), whose CPU provider
has no FLOAT4E2M1 DequantizeLinear. Each
DequantizeLinear of a FLOAT4E2M1 initializer (its scale an initializer or a DequantizeLinear
of initializers, as TensorRT Model Optimizer writes NVFP4) is replaced by the float32 weight it
decodes to, computed exactly as DequantizeLinear defines it: `(x − zero_point) · scale` in
float32, the scale repeated `block_size` times along `axis`."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

FP4 = ir.DataType.FLOAT4E2M1


def has_fp4_weights(model: ir.Model) -> bool:
    return any(v.const_value is not None and v.const_value.dtype == FP4 for v in model.graph.initializers.values())


def dequantize_linear(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int, block_size: int) -> np.ndarray:
    """numpy DequantizeLinear (per tensor, per axis or blocked), float32 arithmetic."""
    values = x.astype(np.float32)
    if zero_point is not None:
        values = values - zero_point.astype(np.float32)  # per-tensor/axis zero points broadcast like the scale below
    scale = scale.astype(np.float32)
    if scale.ndim == 0 or scale.size == 1:
        return (values * scale.reshape(())).astype(np.float32)
    axis = axis % x.ndim
    if block_size:
        scale = np.repeat(scale, block_size, axis=axis).take(np.arange(x.shape[axis]), axis=axis)
    else:
        scale = scale.reshape([-1 if i == axis else 1 for i in range(x.ndim)])
    return (values * scale).astype(np.float32)


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """An initializer's array, or a DequantizeLinear of initializers evaluated; else None."""
    if value is None:
        return None
    if value.is_initializer() and not value.is_graph_input():
        return value.const_value.numpy() if value.const_value is not None else None
    node = value.producer()
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    return _evaluate(node)


def _evaluate(node: ir.Node) -> np.ndarray | None:
    args = [_constant(v) for v in node.inputs[:3]]
    if args[0] is None or args[1] is None or (len(node.inputs) > 2 and node.inputs[2] is not None and args[2] is None):
        return None
    axis = node.attributes.get_int("axis", 1)
    block = node.attributes.get_int("block_size", 0)
    return dequantize_linear(args[0], args[1], args[2] if len(args) > 2 else None, axis, block)


def decode_fp4_weights(model: ir.Model) -> int:
    """Replace every constant FLOAT4E2M1 DequantizeLinear by its float32 result, in place; returns how many."""
    graph = model.graph
    count = 0
    for node in list(graph):
        x = node.inputs[0] if node.op_type == "DequantizeLinear" and node.inputs else None
        if x is None or x.const_value is None or x.const_value.dtype != FP4:
            continue
        weight = _evaluate(node)
        if weight is None:
            continue
        name = f"{node.outputs[0].name or node.name}.decoded"
        value = ir.Value(name=name, shape=ir.Shape(weight.shape), type=ir.TensorType(ir.DataType.FLOAT), const_value=ir.tensor(weight, name=name))
        graph.register_initializer(value)
        ir.convenience.replace_all_uses_with(node.outputs[0], value)
        count += 1
    if count:
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        RemoveUnusedNodesPass()(model)
    return count
