"""Let a fused decoder run on a shared cache buffer: no node may read the cache's length.

With GroupQueryAttention, the cache can live in one preallocated buffer per layer, bound as both
`past_key_values.{i}` and `present.{i}` (ONNX Runtime then appends in place instead of copying
the whole cache every step). The buffer is longer than the cache, so anything that takes the
past length from the cache's shape (exported graphs compute the mask's size that way) must take
it from `attention_mask` instead: past = mask length − number of new tokens.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import ATTENTION_MASK, CACHE_INPUT, INPUT_IDS, MS_DOMAIN
from mlpdeploy.passes.matching import add_initializer, unique_name, value_names


def detach_cache_shapes(model: ir.Model) -> str | None:
    """Rewrite every Shape(past_key_values.*) into the same shape built from attention_mask.

    Returns None when afterwards only GroupQueryAttention reads the cache, else why not.
    """
    graph = model.graph
    inputs = {v.name: v for v in graph.inputs}
    pasts = [v for name, v in inputs.items() if CACHE_INPUT.fullmatch(name)]
    mask, ids = inputs.get(ATTENTION_MASK), inputs.get(INPUT_IDS)
    if not pasts or mask is None or ids is None:
        return "the graph has no cache, attention_mask or input_ids inputs"
    readers = {(u.node.op_type, u.node.domain) for v in pasts for u in v.uses()} - {("GroupQueryAttention", MS_DOMAIN), ("Shape", "")}
    if readers:
        return f"the cache is read by {', '.join(sorted(op for op, _ in readers))}, not only by GroupQueryAttention"
    taken = value_names(graph)
    built: dict[tuple[int, int], ir.Value] = {}
    for past in pasts:
        heads, head_dim = past.shape[1], past.shape[3]
        for use in list(past.uses()):
            node = use.node
            if node.op_type != "Shape":
                continue
            if not (isinstance(heads, int) and isinstance(head_dim, int)):
                return f"the cache {past.name} has no static head count and head size"
            key = (heads, head_dim)
            if key not in built:
                built[key] = _shape_from_mask(graph, mask, ids, heads, head_dim, taken, len(built))
            shape = built[key]
            start, end = node.attributes.get_int("start", 0), node.attributes.get_int("end", None)
            if start != 0 or end is not None:  # Shape(x, start, end) is a slice of the shape
                bounds = [add_initializer(graph, unique_name(f"{node.name or 'shape'}.{k}", taken), np.array([v], np.int64))
                          for k, v in (("start", start), ("end", end if end is not None else 4))]
                sliced = ir.node("Slice", [shape, *bounds], name=unique_name(f"{node.name or 'shape'}/from_mask", taken))
                graph.insert_before(node, sliced)
                sliced.outputs[0].dtype = ir.DataType.INT64
                shape = sliced.outputs[0]
            ir.convenience.replace_all_uses_with(node.outputs[0], shape)
            graph.remove(node, safe=True)
    return None


def _shape_from_mask(graph: ir.Graph, mask: ir.Value, ids: ir.Value, heads: int, head_dim: int, taken: set[str], n: int) -> ir.Value:
    """[batch, heads, mask length − seq, head_dim] as int64, nodes at the start of the graph."""
    def const(suffix: str, array) -> ir.Value:
        return add_initializer(graph, unique_name(f"cache_shape{n}.{suffix}", taken), np.array(array, np.int64))

    mask_shape = ir.node("Shape", [mask], name=unique_name(f"cache_shape{n}/mask", taken))
    ids_shape = ir.node("Shape", [ids], name=unique_name(f"cache_shape{n}/ids", taken))
    batch = ir.node("Slice", [mask_shape.outputs[0], const("zero", [0]), const("one", [1])], name=unique_name(f"cache_shape{n}/batch", taken))
    total = ir.node("Slice", [mask_shape.outputs[0], const("one_", [1]), const("two", [2])], name=unique_name(f"cache_shape{n}/total", taken))
    seq = ir.node("Slice", [ids_shape.outputs[0], const("one__", [1]), const("two_", [2])], name=unique_name(f"cache_shape{n}/seq", taken))
    past = ir.node("Sub", [total.outputs[0], seq.outputs[0]], name=unique_name(f"cache_shape{n}/past", taken))
    shape = ir.node("Concat", [batch.outputs[0], const("heads", [heads]), past.outputs[0], const("head_dim", [head_dim])],
                    {"axis": 0}, name=unique_name(f"cache_shape{n}/shape", taken))
    nodes = [mask_shape, ids_shape, batch, total, seq, past, shape]
    for node in reversed(nodes):
        graph.insert_before(graph.node(0), node)
    out = shape.outputs[0]
    out.dtype, out.shape = ir.DataType.INT64, ir.Shape([4])
    return out
