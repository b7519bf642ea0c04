"""q/k/v projections already quantized as `com.microsoft::MatMulNBits` (pass quantize-weights),
packed into one: the packed weight's rows are the three weights' rows one after the other.

MatMulNBits stores B as [N, KB, blob] with scales [N, KB] (and zero points [N, ·]): every
output column has its own blocks along K, so concatenating along N gives exactly the codes and
scales that quantizing the packed weight would (NVFP4's per-tensor scale is already folded into
the per-block scales of the 8-bit re-encoding). Packs when the three read one input and share
K, bits, block_size and accuracy_level, all with or all without zero points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import MS_DOMAIN
from mlpdeploy.passes.matching import constant, is_constant

MS = MS_DOMAIN
SHARED = ("K", "bits", "block_size", "accuracy_level")


@dataclass
class NBitsLinear:
    """`output = MatMulNBits(x) (+ bias)`: the node, its constant inputs, the nodes to replace."""

    node: ir.Node
    output: ir.Value
    bias: np.ndarray | None
    nodes: list[ir.Node]

    @property
    def input(self) -> ir.Value:
        return self.node.inputs[0]

    @property
    def n(self) -> int:
        return self.node.attributes.get_int("N", 0)

    def key(self) -> tuple:
        attrs = tuple(self.node.attributes.get_int(a, 0) for a in SHARED)
        return (id(self.input), attrs, self._optional(3) is not None)

    def _optional(self, index: int) -> ir.Value | None:
        return self.node.inputs[index] if len(self.node.inputs) > index else None

    def arrays(self) -> list[np.ndarray]:
        return [constant(v) for v in self.node.inputs[1:4] if v is not None]


def match_nbits(value: ir.Value) -> NBitsLinear | None:
    """The MatMulNBits (+ constant bias Add) producing `value`, when its weights are constants
    and it has no g_idx or bias input of its own; else None."""
    node = value.producer()
    bias, nodes = None, []
    if node is not None and node.op_type == "Add" and node.domain in ("", "ai.onnx"):
        a, b = node.inputs
        inner = a if a is not None and a.producer() is not None and a.producer().op_type == "MatMulNBits" else None
        if inner is None or not is_constant(b):
            return None
        bias, nodes, node = constant(b).reshape(-1), [node], inner.producer()
    if node is None or node.op_type != "MatMulNBits" or node.domain != MS:
        return None
    if len(node.inputs) > 4 and any(v is not None for v in node.inputs[4:]):
        return None
    if not all(is_constant(v) for v in node.inputs[1:4] if v is not None):
        return None
    return NBitsLinear(node, value, bias, [node, *nodes])


def packable(parts: list[NBitsLinear]) -> bool:
    return len({p.key() for p in parts}) == 1 and all(len(p.output.uses()) == 1 for p in parts)


def packed_node(parts: list[NBitsLinear], add_initializer, name: str) -> ir.Node:
    """One MatMulNBits computing the three parts' outputs side by side (N = their sum)."""
    first = parts[0].node
    arrays = [p.arrays() for p in parts]
    inputs = [first.inputs[0]]
    for i, suffix in enumerate(("qweight", "scales", "zero_points")[: len(arrays[0])]):
        inputs.append(add_initializer(f"{name}.{suffix}", np.concatenate([a[i] for a in arrays], axis=0)))
    attrs = {a: first.attributes.get_int(a, 0) for a in SHARED}
    return ir.node("MatMulNBits", inputs, {**attrs, "N": sum(p.n for p in parts)}, domain=MS, name=name)
