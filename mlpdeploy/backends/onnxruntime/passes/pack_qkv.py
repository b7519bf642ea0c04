"""Pack a GroupQueryAttention's q, k and v projections into one MatMul (+ bias) feeding it packed.

The three linears read the same input; one [in, q+k+v] weight streams once per step instead
of in three launches, and GroupQueryAttention takes the packed [batch, seq, q+k+v] tensor as its
query with no key and value inputs (what onnxruntime-genai's builder emits): no Split. Where
something still sits between a projection and the attention (a RotaryEmbedding node from an
older graph), the packed output is Split and the pieces go where the three outputs went.
Projections already quantized by `quantize-weights` (MatMulNBits with the same bits, block and
accuracy level) are packed into one MatMulNBits the same way (`pack_nbits`), so a quantized
decoder keeps one QKV matmul per layer.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mlpdeploy.backends.onnxruntime.passes.pack_nbits import match_nbits, packable, packed_node
from mlpdeploy.contract import MS_DOMAIN
from mlpdeploy.passes.matching import MatchFailure, add_initializer, match_linear, remove_dead, unique_name, value_names

MS = MS_DOMAIN


def _source(value: ir.Value) -> ir.Value:
    """The projection's output: `value` itself, or the input of the RotaryEmbedding producing it."""
    node = value.producer()
    rotary = node is not None and node.op_type == "RotaryEmbedding" and node.domain == MS
    return node.inputs[0] if rotary else value


def _float_parts(outputs: list[ir.Value], graph: ir.Graph, taken: set[str], base: str):
    """(packed MatMul node, biases, widths, replaced part objects) for three float linears, or None."""
    try:
        linears = [match_linear(v) for v in outputs]
    except MatchFailure:
        return None
    if len({id(lin.input) for lin in linears}) != 1 or any(len(lin.output.uses()) != 1 for lin in linears):
        return None
    weights = [lin.weight_array() for lin in linears]
    if len({w.dtype for w in weights}) != 1:
        return None
    weight = add_initializer(graph, unique_name(f"{base}.qkv_weight", taken), np.concatenate(weights, axis=1))
    matmul = ir.node("MatMul", [linears[0].input, weight], name=unique_name(f"{base}/qkv", taken))
    widths = [w.shape[1] for w in weights]
    return matmul, [lin.bias_array() for lin in linears], widths, linears, weights[0].dtype


def _nbits_parts(outputs: list[ir.Value], graph: ir.Graph, taken: set[str], base: str):
    parts = [match_nbits(v) for v in outputs]
    if any(p is None for p in parts) or not packable(parts):
        return None
    node = packed_node(parts, lambda name, array: add_initializer(graph, unique_name(name, taken), array), unique_name(f"{base}/qkv", taken))
    return node, [p.bias for p in parts], [p.n for p in parts], parts, np.dtype(np.float32)


def pack_qkv(model: ir.Model) -> int:
    """Pack every GroupQueryAttention whose q/k/v are linears (or MatMulNBits) of one input; returns how many."""
    graph = model.graph
    taken = value_names(graph)
    packed = 0
    for gqa in [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == MS]:
        outputs = [_source(v) for v in gqa.inputs[:3]]
        if any(o.producer() is None for o in outputs):
            continue
        base = outputs[0].producer().name or f"gqa_{packed}"
        found = _float_parts(outputs, graph, taken, base) or _nbits_parts(outputs, graph, taken, base)
        if found is None:
            continue
        matmul, biases, widths, parts, dtype = found
        nodes, out = [matmul], matmul.outputs[0]
        if any(b is not None for b in biases):
            full = np.concatenate([b if b is not None else np.zeros(w, dtype) for b, w in zip(biases, widths)]).astype(dtype)
            bias = add_initializer(graph, unique_name(f"{base}.qkv_bias", taken), full)
            add = ir.node("Add", [out, bias], name=unique_name(f"{base}/qkv_bias", taken))
            nodes.append(add)
            out = add.outputs[0]
        direct = all(o is v for o, v in zip(outputs, gqa.inputs[:3]))  # nothing between projections and attention
        if not direct:
            sizes = add_initializer(graph, unique_name(f"{base}.qkv_split", taken), np.array(widths, np.int64))
            split = ir.node("Split", [out, sizes], {"axis": -1}, num_outputs=3, name=unique_name(f"{base}/qkv_split", taken))
            nodes.append(split)
        first = parts[0].nodes[0]
        graph.insert_before(first, nodes)
        old_inputs = [v for part in parts for node in part.nodes for v in node.inputs]
        if direct:
            out.dtype = parts[0].output.dtype
            q_shape = parts[0].output.shape
            out.shape = ir.Shape([*q_shape[:-1], sum(widths)]) if q_shape is not None else None
            gqa.replace_input_with(0, out)
            gqa.replace_input_with(1, None)
            gqa.replace_input_with(2, None)
        else:
            for part, piece in zip(parts, split.outputs):
                piece.dtype, piece.shape = part.output.dtype, part.output.shape
                ir.convenience.replace_all_uses_with(part.output, piece)
        for part in parts:
            for node in reversed(part.nodes):
                graph.remove(node, safe=True)
        taken.difference_update(remove_dead(graph, old_inputs))
        packed += 1
    return packed
