"""Logits for the last positions only: an optional `logits_to_keep` input in front of the lm_head.

A prefill (or a chunk of one) needs the logits of its last token alone, yet the lm_head — on
SmolLM2-135M 576 x 49,152 multiply-adds a token, a fifth of the model's — runs on every fed
position. This step slices the lm_head's input to its last `logits_to_keep` positions:

    hidden [batch, seq, d] -> Slice(starts=-logits_to_keep, axis 1) -> lm_head -> logits [batch, min(N, seq), vocab]

`logits_to_keep` ([1] int64, as Hugging Face's `logits_to_keep` argument) is a graph input with a
default initializer of INT64_MAX: a caller that does not feed it (validation, onnxruntime-genai,
Triton) gets every position's logits as before. The runtime's step function feeds 1 for prefills
(`runtime.step`). ONNX Runtime does not fold an initializer a graph input may override.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import LOGITS, LOGITS_TO_KEEP
from mlpdeploy.passes.matching import add_initializer, unique_name, value_names

LM_HEADS = ("MatMul", "MatMulNBits")
EVERY_POSITION = np.iinfo(np.int64).max


def keep_last_logits(model: ir.Model) -> str | None:
    """Add the `logits_to_keep` input (module docstring); None, or why the graph does not take it."""
    graph = model.graph
    logits = next((v for v in graph.outputs if v.name == LOGITS), None)
    if logits is None:
        return f"the graph has no {LOGITS} output"
    if any(v.name == LOGITS_TO_KEEP for v in graph.inputs):
        return f"the graph has a {LOGITS_TO_KEEP} input already"
    head = logits.producer()
    if head is None or head.op_type not in LM_HEADS:
        return f"{LOGITS} come from {head.op_type if head else 'no node'}, not a MatMul"
    hidden = head.inputs[0]
    if hidden is None or hidden.shape is None or len(hidden.shape) != 3:
        return "the lm_head's input is not [batch, seq, hidden]"
    taken = value_names(graph)
    keep = add_initializer(graph, LOGITS_TO_KEEP, np.array([EVERY_POSITION], np.int64))
    graph.inputs.append(keep)
    ends = add_initializer(graph, unique_name(f"{LOGITS_TO_KEEP}.ends", taken), np.array([EVERY_POSITION], np.int64))
    axes = add_initializer(graph, unique_name(f"{LOGITS_TO_KEEP}.axes", taken), np.array([1], np.int64))
    neg = ir.Node("", "Neg", [keep], name=unique_name(f"{LOGITS_TO_KEEP}.neg", taken))
    neg.outputs[0].name = unique_name(f"{LOGITS_TO_KEEP}.starts", taken)
    cut = ir.Node("", "Slice", [hidden, neg.outputs[0], ends, axes], name=unique_name(f"{LOGITS_TO_KEEP}.slice", taken))
    cut.outputs[0].name = unique_name(f"{hidden.name}.last", taken)
    cut.outputs[0].dtype, cut.outputs[0].shape = hidden.dtype, ir.Shape([hidden.shape[0], None, hidden.shape[2]])
    graph.insert_before(head, [neg, cut])
    head.replace_input_with(0, cut.outputs[0])
    if logits.shape is not None and len(logits.shape) == 3:  # its positions are now min(N, seq), not seq
        logits.shape = ir.Shape([logits.shape[0], None, logits.shape[2]])
    return None
