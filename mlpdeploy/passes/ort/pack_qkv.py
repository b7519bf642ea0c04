"""Pack a GroupQueryAttention's q, k and v projections into one MatMul (+ bias) and a Split.

The three linears read the same input; one [in, q+k+v] weight streams once per step instead
of in three launches (what onnxruntime-genai's builder emits). Rotary embeddings on q and k
stay where they were, on the Split's outputs.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mlpdeploy.passes.matching import MatchFailure, add_initializer, match_linear, remove_dead, unique_name, value_names

MS = "com.microsoft"


def _projection(value: ir.Value):
    """(the linear producing `value`, the RotaryEmbedding between them or None)."""
    node = value.producer()
    rotary = node if node is not None and node.op_type == "RotaryEmbedding" and node.domain == MS else None
    return match_linear(rotary.inputs[0] if rotary is not None else value), rotary


def pack_qkv(model: ir.Model) -> int:
    """Pack every GroupQueryAttention whose q/k/v are linears of one input; returns how many."""
    graph = model.graph
    taken = value_names(graph)
    packed = 0
    for gqa in [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == MS]:
        try:
            parts = [_projection(v) for v in gqa.inputs[:3]]
        except MatchFailure:
            continue
        linears = [lin for lin, _ in parts]
        if len({id(lin.input) for lin in linears}) != 1 or any(len(lin.output.uses()) != 1 for lin in linears):
            continue
        weights = [lin.weight_array() for lin in linears]
        if len({w.dtype for w in weights}) != 1:
            continue
        widths = [w.shape[1] for w in weights]
        base = linears[0].nodes[0].name or f"gqa_{packed}"
        weight = add_initializer(graph, unique_name(f"{base}.qkv_weight", taken), np.concatenate(weights, axis=1))
        matmul = ir.node("MatMul", [linears[0].input, weight], name=unique_name(f"{base}/qkv", taken))
        nodes, out = [matmul], matmul.outputs[0]
        biases = [lin.bias_array() for lin in linears]
        if any(b is not None for b in biases):
            full = np.concatenate([b if b is not None else np.zeros(w, weights[0].dtype) for b, w in zip(biases, widths)])
            bias = add_initializer(graph, unique_name(f"{base}.qkv_bias", taken), full)
            add = ir.node("Add", [out, bias], name=unique_name(f"{base}/qkv_bias", taken))
            nodes.append(add)
            out = add.outputs[0]
        sizes = add_initializer(graph, unique_name(f"{base}.qkv_split", taken), np.array(widths, np.int64))
        split = ir.node("Split", [out, sizes], {"axis": -1}, num_outputs=3, name=unique_name(f"{base}/qkv_split", taken))
        nodes.append(split)
        first = linears[0].nodes[0]
        graph.insert_before(first, nodes)
        old_inputs = [v for lin in linears for node in lin.nodes for v in node.inputs]
        for (lin, _), piece in zip(parts, split.outputs):
            piece.dtype, piece.shape = lin.output.dtype, lin.output.shape
            ir.convenience.replace_all_uses_with(lin.output, piece)
            for node in reversed(lin.nodes):
                graph.remove(node, safe=True)
        taken.difference_update(remove_dead(graph, old_inputs))
        packed += 1
    return packed
