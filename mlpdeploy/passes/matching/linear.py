"""Linears: y = x·W (+ b) as MatMul, Transpose+MatMul or Gemm, with constant weights."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from mlpdeploy.passes.matching.core import (
    LINEAR_OPS,
    check,
    constant,
    describe,
    float_attr,
    int_attr,
    is_constant,
    op_label,
    producer,
    rank,
    require_constant,
)

# ---------------------------------------------------------------- linears: y = x·W (+ b)


@dataclass
class Linear:
    """`output = input · W + Σ scale·bias`, W a constant read as [in, out] after `transposed`/`alpha`."""

    input: ir.Value
    output: ir.Value
    weight: ir.Value
    transposed: bool = False  # the constant is [out, in]
    alpha: float = 1.0
    biases: list[tuple[ir.Value, float]] = field(default_factory=list)
    nodes: list[ir.Node] = field(default_factory=list)  # MatMul/Gemm (+ Add): replaced with the site

    @property
    def in_features(self) -> int:
        return self._weight_shape()[1 if self.transposed else 0]

    @property
    def out_features(self) -> int:
        return self._weight_shape()[0 if self.transposed else 1]

    @property
    def dtype(self) -> ir.DataType:
        if self.weight.is_initializer():
            return self.weight.const_value.dtype
        return ir.DataType.from_numpy(constant(self.weight).dtype)

    def _weight_shape(self) -> tuple[int, int]:
        return tuple(constant(self.weight).shape) if self.weight.shape is None else tuple(self.weight.shape)

    def weight_array(self) -> np.ndarray:
        """The weight as [in, out] (transposed, alpha folded)."""
        array = constant(self.weight)
        array = array.T if self.transposed else array
        if self.alpha != 1.0:
            array = (array * self.alpha).astype(array.dtype)
        return np.ascontiguousarray(array)

    def bias_array(self) -> np.ndarray | None:
        """The total bias as [out], or None."""
        if not self.biases:
            return None
        total = None
        for value, scale in self.biases:
            array = constant(value)
            term = np.broadcast_to(array.reshape(-1), (self.out_features,)).astype(array.dtype)
            term = term * scale if scale != 1.0 else term
            total = term if total is None else total + term
        return total.astype(constant(self.biases[0][0]).dtype)

    def reusable_weight(self) -> ir.Value | None:
        """The weight initializer itself when it already is [in, out] with nothing folded."""
        ok = not self.transposed and self.alpha == 1.0 and self.weight.is_initializer()
        return self.weight if ok else None

    def reusable_bias(self) -> ir.Value | None:
        """The bias initializer itself when it already is one [out] vector."""
        if len(self.biases) != 1:
            return None
        value, scale = self.biases[0]
        ok = scale == 1.0 and value.is_initializer() and value.shape is not None and list(value.shape) == [self.out_features]
        return value if ok else None


def looks_linear(value: ir.Value | None) -> bool:
    """Cheap probe: `value` comes from MatMul/Gemm, possibly through an Add of a constant."""
    node = producer(value)
    if node is not None and node.op_type == "Add" and len(node.inputs) == 2:
        a, b = node.inputs
        return (is_constant(b) and producer(a, *LINEAR_OPS) is not None) or (is_constant(a) and producer(b, *LINEAR_OPS) is not None)
    return node is not None and node.op_type in LINEAR_OPS


def match_linear(value: ir.Value) -> Linear:
    """Recognize `value = x·W (+ b)`: MatMul with W or Transpose(W), or Gemm (transB 0/1), an
    optional Add of a constant bias [out]. W and b must be constants."""
    node = producer(value)
    check(node is not None, f"{describe(value)} comes from {op_label(value)}, not a linear (MatMul/Gemm)")
    biases: list[tuple[ir.Value, float]] = []
    nodes: list[ir.Node] = []
    if node.op_type == "Add" and len(node.inputs) == 2:
        a, b = node.inputs
        pairs = [(lin, c) for lin, c in ((a, b), (b, a)) if is_constant(c) and producer(lin, *LINEAR_OPS) is not None]
        check(bool(pairs), f"{describe(value)} comes from an Add that is not a linear's bias add")
        inner, bias = pairs[0]
        biases.append((bias, 1.0))
        nodes.append(node)
        node = inner.producer()
    check(node.op_type in LINEAR_OPS, f"{describe(value)} comes from {node.op_type}, not a linear (MatMul/Gemm)")
    nodes.insert(0, node)
    x, weight = node.inputs[0], node.inputs[1]
    check(x is not None and weight is not None, f"{node.op_type} {node.name!r} is missing an input")
    alpha, transposed = 1.0, False
    if node.op_type == "Gemm":
        check(int_attr(node, "transA", 0) == 0, f"Gemm {node.name!r} has transA=1 (its data input is transposed)")
        alpha, transposed = float_attr(node, "alpha", 1.0), bool(int_attr(node, "transB", 0))
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            require_constant(node.inputs[2], "bias", node)
            biases.insert(0, (node.inputs[2], float_attr(node, "beta", 1.0)))
    transpose = producer(weight, "Transpose")
    if transpose is not None and is_constant(transpose.inputs[0]):
        perm = transpose.attributes.get("perm")
        check(perm is None or list(perm.as_ints()) == [1, 0], f"weight Transpose {transpose.name!r} has perm {perm}")
        weight, transposed = transpose.inputs[0], not transposed
    require_constant(weight, "weight", node)
    shape = constant(weight).shape
    check(len(shape) == 2, f"weight {describe(weight)} of {node.op_type} {node.name!r} has rank {len(shape)}, not 2")
    linear = Linear(x, value, weight, transposed, alpha, biases, nodes)
    for bias, _ in biases:
        b = constant(bias)
        lead_ones = all(s == 1 for s in b.shape[:-1])
        ok = b.size == 1 or (lead_ones and b.shape[-1] == linear.out_features)
        check(ok, f"bias {describe(bias)} has shape {list(b.shape)}, not [{linear.out_features}]")
        x_rank = rank(x)
        check(b.ndim <= 1 or (x_rank is not None and x_rank >= b.ndim), f"bias {describe(bias)} of rank {b.ndim} may broadcast the output")
    return linear
