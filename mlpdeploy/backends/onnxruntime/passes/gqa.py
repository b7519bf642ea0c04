"""The attention of a cached decoder layer → one GroupQueryAttention (com.microsoft), rotary inside.

Matched after onnxscript's rotary and SDPA fusions (intermediate ops in `ai.onnxruntime._fusion`):

    q, k, v = Transpose(Reshape(x_BSD)) for each projection
    q, k    = RotaryEmbedding(q, cos, sin), RotaryEmbedding(k, cos, sin)      (optional: no rotary)
    present_k, present_v = Concat(past_k, k), Concat(past_v, v)                (past: graph inputs)
    attn    = SDPA(q, repeat_kv(present_k), repeat_kv(present_v), mask)      (repeat_kv optional)
    out     = Reshape(Transpose(attn))

Rewritten as one GroupQueryAttention(q, k, v, past_k, past_v, seqlens_k, total_sequence_length,
cos_cache, sin_cache, position_ids, attention_bias=mask, query_seqlens, do_rotary=1): the kernel
rotates q and k itself, at the graph's own `position_ids`, row by row. `query_seqlens` is the
chunk length of every row. `seqlens_k` is, per row, the index of the row's last attended column
(its last 1 in `attention_mask`): total − 1 whenever a step's last column is a real token of every
row (left-padded batches, holes from rewinds: every cached position is kept and the model's mask,
passed as attention_bias, hides padding), and the row's own length when a row's mask ends in
zeros — a batch whose rows hold different lengths, each row's tokens in columns 0..length−1 (the
in-flight scheduler's layout: GroupQueryAttention appends each row's new tokens at its own length
and attends over its own columns only, exactly as the row alone). Masks and positions are the
model's own. (Measured on ONNX Runtime 1.32: with `query_seqlens` given, the fused rotation is
bit-identical to separate com.microsoft RotaryEmbedding nodes for prefill, left-padded prefill,
decode at arbitrary per-row positions and multi-token chunks; without it a first prompt is
rotated from its first position only, wrong for left-padded rows.) The rotary tables are the
model's angles evaluated at positions 0..max−1 (checked to be a rotate-half table that depends on
`position_ids` alone).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript.rewriter import _ir_utils, pattern

from mlpdeploy.contract import MS_DOMAIN

INTERMEDIATE_DOMAIN = "ai.onnxruntime._fusion"
MS = MS_DOMAIN
ANY = pattern.ANY_VALUE


def _const(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                     const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


class GQAInputs:
    """The inputs every GroupQueryAttention of a graph shares: seqlens_k and total length from
    attention_mask, and rotary tables (made on first use, one pair per distinct angle source)."""

    def __init__(self, model: ir.Model, max_positions: int):
        self.model, self.max_positions = model, max_positions
        self.ok, self.why = True, None
        self.position_ids = next((v for v in model.graph.inputs if v.name == "position_ids"), None)
        self._tables: dict[tuple[int, int], tuple[ir.Value, ir.Value]] = {}

    @classmethod
    def add_to(cls, model: ir.Model, max_positions: int) -> "GQAInputs":
        inputs = cls(model, max_positions)
        graph = model.graph
        mask = next((v for v in graph.inputs if v.name == "attention_mask"), None)
        ids = next((v for v in graph.inputs if v.name == "input_ids"), None)
        if mask is None or ids is None:
            inputs.ok, inputs.why = False, "the graph has no attention_mask or input_ids input"
            return inputs
        if mask.dtype not in (None, ir.DataType.INT64):
            inputs.ok, inputs.why = False, f"attention_mask is {mask.dtype}, not int64"
            return inputs
        first, second = _const(graph, "gqa.axis0", np.array([0], np.int64)), _const(graph, "gqa.axis1", np.array(1, np.int64))
        zero, step, rows = (_const(graph, name, np.array(v, np.int64)) for name, v in (("gqa.zero", 0), ("gqa.step", 1), ("gqa.rows", [1])))
        shape = ir.node("Shape", [mask], name="gqa/shape")
        total = ir.node("Gather", [shape.outputs[0], second], {"axis": 0}, name="gqa/total")
        total32 = ir.node("Cast", [total.outputs[0]], {"to": ir.DataType.INT32}, name="gqa/total_sequence_length")
        batch = ir.node("Gather", [shape.outputs[0], first], {"axis": 0}, name="gqa/batch")
        # seqlens_k[b] = the index of row b's last 1 in the mask: max over columns of mask * column
        columns = ir.node("Range", [zero, total.outputs[0], step], name="gqa/columns")
        attended = ir.node("Mul", [mask, columns.outputs[0]], name="gqa/attended_columns")
        last = ir.node("ReduceMax", [attended.outputs[0], rows], {"keepdims": 0}, name="gqa/last_column")
        seqlens = ir.node("Cast", [last.outputs[0]], {"to": ir.DataType.INT32}, name="gqa/seqlens_k")
        # query_seqlens: every row's whole chunk is valid (lets batches of several tokens each
        # continue a cache, which GroupQueryAttention otherwise refuses)
        ids_shape = ir.node("Shape", [ids], name="gqa/ids_shape")
        seq = ir.node("Gather", [ids_shape.outputs[0], second], {"axis": 0}, name="gqa/seq")
        seq_rows = ir.node("Expand", [seq.outputs[0], batch.outputs[0]], name="gqa/seq_every_row")
        query_seqlens = ir.node("Cast", [seq_rows.outputs[0]], {"to": ir.DataType.INT32}, name="gqa/query_seqlens")
        nodes = [shape, total, total32, batch, columns, attended, last, seqlens, ids_shape, seq, seq_rows, query_seqlens]
        for node in reversed(nodes):
            graph.insert_before(graph.node(0), node)
        total32.outputs[0].name, seqlens.outputs[0].name = "gqa_total_sequence_length", "gqa_seqlens_k"
        total32.outputs[0].dtype, seqlens.outputs[0].dtype = ir.DataType.INT32, ir.DataType.INT32
        total32.outputs[0].shape, seqlens.outputs[0].shape = ir.Shape([]), ir.Shape([mask.shape[0] if mask.shape else "batch"])
        query_seqlens.outputs[0].dtype = ir.DataType.INT32
        inputs.seqlens_k, inputs.total, inputs.query_seqlens = seqlens.outputs[0], total32.outputs[0], query_seqlens.outputs[0]
        return inputs

    def tables(self, cos: ir.Value, sin: ir.Value, head_dim: int) -> tuple[ir.Value, ir.Value] | str:
        """(cos_cache, sin_cache) [max, head_dim/2] for the angles `cos`/`sin` compute, or why not."""
        key = (id(cos), id(sin))
        if key not in self._tables:
            made = self._evaluate(cos, sin, head_dim)
            if isinstance(made, str):
                return made
            cos_table, sin_table = made
            n = len(self._tables)
            graph = self.model.graph
            self._tables[key] = (_const(graph, f"gqa.cos_cache_{n}", cos_table), _const(graph, f"gqa.sin_cache_{n}", sin_table))
        return self._tables[key]

    def _evaluate(self, cos: ir.Value, sin: ir.Value, head_dim: int) -> tuple[np.ndarray, np.ndarray] | str:
        import onnxruntime as ort

        if self.position_ids is None:
            return "the graph has no position_ids input for the rotary tables"
        feeds = graph_inputs_of([cos, sin], self.model.graph)
        if feeds != {"position_ids"}:
            return f"the rotary angles depend on {sorted(feeds)}, not on position_ids alone"
        proto = ir.to_proto(self.model)
        try:
            sub = onnx.utils.Extractor(proto).extract_model(["position_ids"], [cos.name, sin.name])
            session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
            positions = np.arange(self.max_positions, dtype=np.int64)[None]
            cos_full, sin_full = (a.reshape(-1, head_dim) for a in session.run(None, {"position_ids": positions}))
        except Exception as exc:  # an angle subgraph that cannot be evaluated on its own
            return f"the rotary angles could not be evaluated from position_ids ({type(exc).__name__})"
        half = head_dim // 2
        if cos_full.shape[0] != self.max_positions:
            return f"the rotary tables have {cos_full.shape[0]} rows for {self.max_positions} positions"
        if not (np.array_equal(cos_full[:, :half], cos_full[:, half:]) and np.array_equal(sin_full[:, :half], sin_full[:, half:])):
            return "the rotary tables are not a rotate-half layout (both halves equal)"
        return np.ascontiguousarray(cos_full[:, :half], np.float32), np.ascontiguousarray(sin_full[:, :half], np.float32)


def graph_inputs_of(values: list[ir.Value], graph: ir.Graph) -> set[str]:
    """Names of the graph inputs `values` are computed from."""
    inputs, seen, stack = set(), set(), list(values)
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if value.is_graph_input():
            inputs.add(value.name)
        node = value.producer()
        if node is not None:
            stack.extend(v for v in node.inputs if v is not None)
    return inputs


def _heads(op, x_BSD, name: str):
    return op.Transpose(op.Reshape(x_BSD, ANY, _outputs=[name]), perm=[0, 2, 1, 3])


def _repeat_kv(op, x, repeat: bool):
    return op.Reshape(op.Expand(op.Unsqueeze(x, ANY), ANY), ANY) if repeat else x


def attention_rules(inputs: GQAInputs) -> pattern.RewriteRuleSet:
    """The rules for every variant: with or without rotary, with or without repeated KV heads.

    One rule per variant rather than a pattern.OrValue for the repeat: onnxscript's matcher does
    not look through an OrValue for a pattern's output nodes, so the cache Concats became output
    nodes of their own, matched by trying every Reshape × Concat × Concat of the graph (56 s of
    a 62 s SmolLM2-135M build); without it each match starts at one node."""
    return pattern.RewriteRuleSet([AttentionToGQA.rule(inputs, rotary=rotary, repeat=repeat) for rotary in (True, False) for repeat in (True, False)])


class AttentionToGQA(pattern.RewriteRuleClassBase):
    """One cached attention layer → GroupQueryAttention, rotating q and k inside (module docstring)."""

    def __init__(self, inputs: GQAInputs, rotary: bool, repeat: bool = True):
        super().__init__("AttentionToGQA" + ("" if rotary else "NoRotary") + ("" if repeat else "NoRepeat"), remove_nodes=False)
        self.inputs, self.rotary, self.repeat = inputs, rotary, repeat

    def pattern(self, op, q_BSD, k_BSD, v_BSD, past_k, past_v, mask):
        q = _heads(op, q_BSD, "q_BSHD")
        k = _heads(op, k_BSD, "k_BSHD")
        v = _heads(op, v_BSD, "v_BSHD")
        if self.rotary:
            q = op.RotaryEmbedding(q, ANY, ANY, _domain=INTERMEDIATE_DOMAIN, _allow_other_attributes=True, _outputs=["q_rot"])
            k = op.RotaryEmbedding(k, ANY, ANY, _domain=INTERMEDIATE_DOMAIN, _allow_other_attributes=True, _outputs=["k_rot"])
        present_k = op.Concat(past_k, k, _allow_other_attributes=True, _outputs=["present_k"])
        present_v = op.Concat(past_v, v, _allow_other_attributes=True, _outputs=["present_v"])
        attn = op.SDPA(q, _repeat_kv(op, present_k, self.repeat), _repeat_kv(op, present_v, self.repeat), mask,
                       _domain=INTERMEDIATE_DOMAIN, _allow_other_attributes=True, _outputs=["attn"])
        return op.Reshape(op.Transpose(attn, perm=[0, 2, 1, 3]), ANY), present_k, present_v

    def check(self, context, q_BSHD, k_BSHD, v_BSHD, past_k, past_v, present_k, present_v, mask, attn,
              q_rot=None, k_rot=None, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        for value in (past_k, past_v):
            if not value.is_graph_input():
                return result.fail(f"{value.name} is not a graph input (the cache)")
        for value in (present_k, present_v):
            if not value.is_graph_output():
                return result.fail(f"{value.name} is not a graph output (the cache)")
        for concat in (present_k.producer(), present_v.producer()):
            if concat.attributes.get_int("axis", None) not in (2, -2):
                return result.fail("the cache is not concatenated along the sequence axis")
        heads, kv_heads = _ir_utils.get_dim(q_BSHD, 2), _ir_utils.get_dim(k_BSHD, 2)
        head_dim, v_head_dim = _ir_utils.get_dim(q_BSHD, 3), _ir_utils.get_dim(v_BSHD, 3)
        if not all(isinstance(d, int) for d in (heads, kv_heads, head_dim)) or v_head_dim != head_dim:
            return result.fail("head counts and sizes are not static, or values differ in head size")
        if head_dim % 8:  # the CPU kernel refuses it at run time ("head_size must be a multiple of 8"): found by fuzzing
            self.inputs.why = f"head size {head_dim} is not a multiple of 8, which ONNX Runtime's GroupQueryAttention requires"
            return result.fail(self.inputs.why)
        sdpa = attn.producer()
        if sdpa.attributes.get_string("key_format", "BHSd") != "BHSd":
            return result.fail("attention key format is not BHSd")
        if mask.dtype not in (None, ir.DataType.FLOAT) or (mask.shape is not None and len(mask.shape) != 4):
            return result.fail("the mask is not an additive float [batch, 1, seq, total] tensor")
        tables = None
        if q_rot is not None and head_dim % 16:  # the CPU kernel refuses do_rotary=1 at run time ("head_size shall be a multiple of 16")
            self.inputs.why = f"head size {head_dim} is not a multiple of 16, which ONNX Runtime's GroupQueryAttention needs to rotate inside"
            return result.fail(self.inputs.why)
        if q_rot is not None:
            rq, rk = q_rot.producer(), k_rot.producer()
            if rq.inputs[1:] != rk.inputs[1:]:
                return result.fail("q and k are rotated by different angles")
            if rq.attributes.get_int("interleaved", 0) or rk.attributes.get_int("interleaved", 0):
                return result.fail("interleaved rotary")
            tables = self.inputs.tables(rq.inputs[1], rq.inputs[2], head_dim)
            if isinstance(tables, str):
                return result.fail(tables)
        scale = sdpa.attributes.get_float("scale", None)
        self._found = {"heads": heads, "kv_heads": kv_heads, "tables": tables,
                       "scale": float(scale) if scale is not None else 1.0 / math.sqrt(head_dim)}
        return result

    def rewrite(self, op, q_BSD, k_BSD, v_BSD, past_k, past_v, mask, **_):
        found, inputs = self._found, self.inputs
        rotary = found["tables"] is not None
        cos_cache, sin_cache = found["tables"] if rotary else (None, None)
        return op.GroupQueryAttention(
            q_BSD, k_BSD, v_BSD, past_k, past_v, inputs.seqlens_k, inputs.total, cos_cache, sin_cache,
            inputs.position_ids if rotary else None, mask, None, None, None, None, None, inputs.query_seqlens,
            num_heads=found["heads"], kv_num_heads=found["kv_heads"], scale=found["scale"], do_rotary=int(rotary), rotary_interleaved=0,
            _domain=MS, _outputs=3,
        )
