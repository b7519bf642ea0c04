"""A cached decoder's attention bias rebuilt from `attention_mask` in a dozen nodes, when provably equal.

Exported Hugging Face decoders compute their causal + padding mask with ~35 small shape, range,
gather and logic nodes (generic code for every mask variant), and ONNX Runtime runs all of them
at every decode step. For the plain causal mask with padding, the same [batch, 1, seq, total]
bias is

    keep[b, 0, q, k] = attention_mask[b, k] ∧ k ≤ (total − seq) + q
    bias = Where(keep, 0, masked value)      (optionally: rows with no key kept → all 0)

The rewrite is not trusted from a pattern: both subgraphs are evaluated on probe inputs (prefill,
decode, left-padded batches, a chunk continuing a cache, a context as long as the rotary tables,
which exposes a sliding window) and the compact one replaces the original only when every probe
gives bit-identical biases. Otherwise the graph is left as it was and the reason is returned.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from mlpdeploy.backends.onnxruntime.passes.gqa import graph_inputs_of
from mlpdeploy.contract import MS_DOMAIN
from mlpdeploy.passes.matching import add_initializer, unique_name, value_names

MS = MS_DOMAIN
BIAS_INPUT = 10  # GroupQueryAttention's attention_bias
BIAS_NAME = "compact_attention_bias"  # the rebuilt bias (and `_unmasked`): the plain causal + padding mask
ALLOWED_SOURCES = {"input_ids", "attention_mask", "position_ids"}


def compact_attention_bias(model: ir.Model, max_positions: int) -> str | None:
    """Replace the bias every GroupQueryAttention reads by the compact subgraph; None when done, else why not."""
    graph = model.graph
    gqas = [n for n in graph if n.op_type == "GroupQueryAttention" and n.domain == MS]
    biases = {id(n.inputs[BIAS_INPUT]): n.inputs[BIAS_INPUT] for n in gqas if len(n.inputs) > BIAS_INPUT}
    if not gqas or len(biases) != 1 or None in biases.values():
        return "the attention layers do not share one attention_bias"
    bias = next(iter(biases.values()))
    inputs = {v.name: v for v in graph.inputs}
    sources = graph_inputs_of([bias], graph)
    if bias.producer() is None or not sources <= ALLOWED_SOURCES or not {"input_ids", "attention_mask"} <= set(inputs):
        return f"the attention bias depends on {sorted(sources)}, not only on input_ids, attention_mask and position_ids"
    probes = _probes(max_positions, "position_ids" in sources)
    try:
        (original,) = _evaluate(model, [bias.name], sources, probes)
    except Exception as exc:  # noqa: BLE001 - a subgraph that cannot run alone keeps the original
        return f"the attention bias could not be evaluated on its own ({type(exc).__name__})"
    masked = min((float(o.min()) for o in original), default=0.0)
    nodes, candidates = _compact_nodes(graph, inputs["input_ids"], inputs["attention_mask"], masked, original[0].dtype)
    for node in reversed(nodes):
        graph.insert_before(graph.node(0), node)
    try:
        results = _evaluate(model, [c.name for c in candidates], sources, probes)
    except Exception:  # noqa: BLE001 - candidates that cannot run match nothing
        results = []
    for compact, result in zip(candidates, results):
        if all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(original, result)):
            for node in gqas:  # the original subgraph and the other candidate are left dead: the caller removes unused nodes
                node.replace_input_with(BIAS_INPUT, compact)
            return None
    for node in reversed(nodes):
        graph.remove(node, safe=True)
    return "the exported mask is not the plain causal + padding mask on every probe (kept as exported)"


def _compact_nodes(graph, ids, mask, masked: float, dtype):
    """The compact bias nodes and their two candidate outputs: the plain bias, and the same with rows
    that keep no key (padding queries) attending to everything, as sdpa masks do."""
    taken = value_names(graph)

    def const(name: str, array: np.ndarray) -> ir.Value:
        return add_initializer(graph, unique_name(f"compact_mask.{name}", taken), array)

    def node(op: str, inputs, name: str, **attrs) -> ir.Node:
        return ir.node(op, inputs, attrs, name=unique_name(f"compact_mask/{name}", taken))

    one, zero = const("one", np.array(1, np.int64)), const("zero", np.array(0, np.int64))
    ids_shape, mask_shape = node("Shape", [ids], "ids_shape"), node("Shape", [mask], "mask_shape")
    seq = node("Gather", [ids_shape.outputs[0], one], "seq", axis=0)
    total = node("Gather", [mask_shape.outputs[0], one], "total", axis=0)
    past = node("Sub", [total.outputs[0], seq.outputs[0]], "past")
    keys = node("Range", [zero, total.outputs[0], one], "key_positions")
    queries = node("Range", [past.outputs[0], total.outputs[0], one], "query_positions")
    column = node("Unsqueeze", [queries.outputs[0], const("axis1", np.array([1], np.int64))], "query_column")
    causal = node("LessOrEqual", [keys.outputs[0], column.outputs[0]], "causal")
    present = node("Cast", [mask], "present", to=ir.DataType.BOOL)
    rows = node("Unsqueeze", [present.outputs[0], const("axes12", np.array([1, 2], np.int64))], "present_rows")
    keep = node("And", [causal.outputs[0], rows.outputs[0]], "keep")
    nodes = [ids_shape, mask_shape, seq, total, past, keys, queries, column, causal, present, rows, keep]
    zero_bias = const("zero_bias", np.array(0, dtype))
    where = node("Where", [keep.outputs[0], zero_bias, const("masked", np.array(masked, dtype))], "bias")
    kept = node("Cast", [keep.outputs[0]], "keep_int", to=ir.DataType.INT32)
    any_kept = node("ReduceMax", [kept.outputs[0], const("last_axis", np.array([-1], np.int64))], "any_kept", keepdims=1)
    has_key = node("Cast", [any_kept.outputs[0]], "has_key", to=ir.DataType.BOOL)
    unmasked = node("Where", [has_key.outputs[0], where.outputs[0], zero_bias], "bias_unmasked")
    nodes += [where, kept, any_kept, has_key, unmasked]
    candidates = [where.outputs[0], unmasked.outputs[0]]
    for out, name in zip(candidates, (BIAS_NAME, f"{BIAS_NAME}_unmasked")):
        out.name = unique_name(name, taken)
        out.dtype = ir.DataType.from_numpy(np.dtype(dtype))
    return nodes, candidates


def _probes(max_positions: int, with_positions: bool) -> list[dict[str, np.ndarray]]:
    """input_ids / attention_mask (/ position_ids as Hugging Face derives them) for each probe case."""
    cases = [
        np.ones((1, 5), np.int64),                                    # prefill, no padding (seq = total)
        np.ones((1, 9), np.int64),                                    # decode step (seq 1)
        np.array([[0, 0, 1, 1, 1, 1], [1] * 6, [0, 0, 0, 0, 0, 1]]),  # left-padded prefill
        np.array([[0, 0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 10, [0] * 9 + [1]]),  # left-padded decode
        np.array([[0, 1, 1, 1, 1, 1, 1, 1], [1] * 8]),                # a 3-token chunk continuing a cache
        np.ones((1, max(2, max_positions)), np.int64),                # the longest context (sliding windows show here)
    ]
    seqs = [5, 1, 6, 1, 3, 1]
    probes = []
    for mask, seq in zip(cases, seqs):
        mask = mask.astype(np.int64)
        feed = {"input_ids": np.zeros((mask.shape[0], seq), np.int64), "attention_mask": mask}
        if with_positions:
            positions = np.cumsum(mask, axis=1) - 1
            positions[mask == 0] = 1
            feed["position_ids"] = positions[:, -seq:]
        probes.append(feed)
    return probes


def _evaluate(model: ir.Model, names: list[str], sources: set[str], probes: list[dict]) -> list[list[np.ndarray]]:
    """Each of `names` on every probe, from one extraction of the subgraph computing them."""
    import onnxruntime as ort

    proto = onnx.shape_inference.infer_shapes(ir.to_proto(model))  # the extractor needs the outputs' types
    sub = onnx.utils.Extractor(proto).extract_model(sorted(sources), names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    runs = [session.run(names, {k: v for k, v in feed.items() if k in wanted}) for feed in probes]
    return [[run[i] for run in runs] for i in range(len(names))]
