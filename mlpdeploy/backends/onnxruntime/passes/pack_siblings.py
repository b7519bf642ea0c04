"""4-bit linears that read the same input (a gated MLP's gate and up projections) as one MatMulNBits and a Split.

quantize-weights leaves a LLaMA MLP's gate and up as two MatMulNBits on the same normed input.
One MatMulNBits with both weights' rows (`pack_nbits`: codes and scales concatenated along N,
exactly what quantizing the stacked weight gives) does one launch instead of two at every step,
and at accuracy level 4 quantizes the shared input to int8 once; a Split gives each consumer its
part. Every output column is computed from the same codes, scales and input blocks as before.
Siblings pack when they share K, bits, block size and accuracy level, all with or all without
zero points, and take no bias or g_idx input.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mlpdeploy.backends.onnxruntime.passes.pack_nbits import MS, NBitsLinear, match_nbits, packed_node
from mlpdeploy.passes.matching import add_initializer, remove_dead, unique_name, value_names


def pack_sibling_nbits(model: ir.Model) -> int:
    """Pack every group of MatMulNBits siblings of one input; returns how many groups were packed."""
    graph = model.graph
    order = {id(node): i for i, node in enumerate(graph)}
    groups: dict[tuple, list[NBitsLinear]] = {}
    for node in graph:
        if node.op_type == "MatMulNBits" and node.domain == MS and not node.outputs[0].is_graph_output():
            part = match_nbits(node.outputs[0])
            if part is not None:
                groups.setdefault(part.key(), []).append(part)
    taken, packed = value_names(graph), 0
    for parts in groups.values():
        if len(parts) < 2:
            continue
        parts.sort(key=lambda p: order[id(p.node)])
        base = parts[0].node.name or f"siblings_{packed}"
        node = packed_node(parts, lambda name, array: add_initializer(graph, unique_name(name, taken), array), unique_name(f"{base}/packed", taken))
        sizes = add_initializer(graph, unique_name(f"{base}.split", taken), np.array([p.n for p in parts], np.int64))
        split = ir.node("Split", [node.outputs[0], sizes], {"axis": -1}, num_outputs=len(parts), name=unique_name(f"{base}/split", taken))
        graph.insert_before(parts[0].node, [node, split])
        old_inputs = [v for p in parts for v in p.node.inputs]
        for part, piece in zip(parts, split.outputs):
            piece.dtype, piece.shape = part.output.dtype, part.output.shape
            ir.convenience.replace_all_uses_with(part.output, piece)
            graph.remove(part.node, safe=True)
        taken.difference_update(remove_dead(graph, old_inputs))
        packed += 1
    return packed
