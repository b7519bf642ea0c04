"""ort-decoder's compact attention mask: replaces a plain causal + padding bias, refuses anything else."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from mlpdeploy.backends.onnxruntime.passes.compact_mask import compact_attention_bias

MIN = float(np.finfo(np.float32).min)


def _model(window: int | None = None, unmask_empty_rows: bool = False) -> ir.Model:
    """A GroupQueryAttention (never run) reading a bias built the long way, like an exported mask."""
    c = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [], [v])  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]), helper.make_node("Gather", ["ids_shape", "one"], ["S"], axis=0),
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"]), helper.make_node("Gather", ["mask_shape", "one"], ["T"], axis=0),
        helper.make_node("Sub", ["T", "S"], ["P"]),
        helper.make_node("Range", ["zero", "T", "one"], ["k"]), helper.make_node("Range", ["zero", "S", "one"], ["q0"]),
        helper.make_node("Add", ["q0", "P"], ["q"]), helper.make_node("Unsqueeze", ["q", "ax1"], ["qc"]),
        helper.make_node("GreaterOrEqual", ["qc", "k"], ["causal0"]),
    ]
    if window is not None:
        nodes += [helper.make_node("Sub", ["qc", "W"], ["lo"]), helper.make_node("Greater", ["k", "lo"], ["in_window"]),
                  helper.make_node("And", ["causal0", "in_window"], ["causal"])]
    else:
        nodes.append(helper.make_node("Identity", ["causal0"], ["causal"]))
    nodes += [
        helper.make_node("Unsqueeze", ["attention_mask", "ax12"], ["m4"]), helper.make_node("Cast", ["m4"], ["pad"], to=TensorProto.BOOL),
        helper.make_node("And", ["causal", "pad"], ["keep"]), helper.make_node("Where", ["keep", "fzero", "fmin"], ["bias0"]),
    ]
    if unmask_empty_rows:
        nodes += [helper.make_node("Cast", ["keep"], ["keep_f"], to=TensorProto.FLOAT),
                  helper.make_node("ReduceMax", ["keep_f", "axm1"], ["row_any"], keepdims=1),
                  helper.make_node("Cast", ["row_any"], ["has"], to=TensorProto.BOOL),
                  helper.make_node("Where", ["has", "bias0", "fzero"], ["bias"])]
    else:
        nodes.append(helper.make_node("Identity", ["bias0"], ["bias"]))
    nodes.append(helper.make_node("GroupQueryAttention", ["q_in", "", "", "", "", "", "", "", "", "", "bias"], ["y"],
                                  domain="com.microsoft", num_heads=1, kv_num_heads=1))
    inits = [c("one", 1), c("zero", 0), c("W", window or 0), helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("ax12", TensorProto.INT64, [2], [1, 2]), helper.make_tensor("axm1", TensorProto.INT64, [1], [-1]),
             helper.make_tensor("fzero", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("fmin", TensorProto.FLOAT, [], [MIN])]
    graph = helper.make_graph(
        nodes, "mask", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
                        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "t"]),
                        helper.make_tensor_value_info("q_in", TensorProto.FLOAT, ["b", "s", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]))


def _bias_of(model: ir.Model, mask: np.ndarray, seq: int) -> np.ndarray:
    gqa = next(n for n in model.graph if n.op_type == "GroupQueryAttention")
    proto = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(ir.to_proto(model))).extract_model(["input_ids", "attention_mask"], [gqa.inputs[10].name])
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": np.zeros((mask.shape[0], seq), np.int64), "attention_mask": mask.astype(np.int64)})[0]


def _reference(mask: np.ndarray, seq: int, unmask_empty_rows: bool = False) -> np.ndarray:
    total = mask.shape[1]
    causal = np.arange(total)[None, :] <= (total - seq + np.arange(seq))[:, None]
    keep = causal[None] & (mask[:, None, :] == 1)
    bias = np.where(keep, 0.0, MIN).astype(np.float32)[:, None]
    if unmask_empty_rows:
        bias = np.where(keep.any(-1)[:, None, :, None], bias, 0.0).astype(np.float32)
    return bias


@pytest.mark.parametrize("unmask_empty_rows", [False, True])
def test_plain_causal_padding_mask_is_replaced(unmask_empty_rows):
    model = _model(unmask_empty_rows=unmask_empty_rows)
    assert compact_attention_bias(model, max_positions=64) is None
    gqa = next(n for n in model.graph if n.op_type == "GroupQueryAttention")
    assert gqa.inputs[10].name.startswith("compact_attention_bias")
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    for seq in (1, 2, 5):
        np.testing.assert_array_equal(_bias_of(model, mask, seq), _reference(mask, seq, unmask_empty_rows))


def test_sliding_window_mask_is_kept():
    model = _model(window=32)
    before = [n.op_type for n in model.graph]
    why = compact_attention_bias(model, max_positions=64)  # the 64-token probe sees the window
    assert why == "the exported mask is not the plain causal + padding mask on every probe (kept as exported)"
    assert [n.op_type for n in model.graph] == before
    assert next(n for n in model.graph if n.op_type == "GroupQueryAttention").inputs[10].name == "bias"


def test_bias_from_another_input_is_refused():
    model = _model()
    gqa = next(n for n in model.graph if n.op_type == "GroupQueryAttention")
    gqa.replace_input_with(10, model.graph.inputs[2])  # q_in: not a mask
    why = compact_attention_bias(model, max_positions=16)
    assert why is not None and "depends on ['q_in']" in why


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 4), total=st.integers(1, 23), data=st.data())
def test_compact_bias_matches_reference_on_random_masks(batch, total, data):
    model = _model()
    assert compact_attention_bias(model, max_positions=8) is None
    seq = data.draw(st.integers(1, total))
    pads = data.draw(st.lists(st.integers(0, total), min_size=batch, max_size=batch))
    mask = np.array([[0] * p + [1] * (total - p) for p in pads])
    np.testing.assert_array_equal(_bias_of(model, mask, seq), _reference(mask, seq))
