"""draft-heads: a plan's Medusa-style draft heads built into a causal LM's graph as extra outputs.

Reads the heads `analyze --draft-heads N` trained (`artifact`: the plan's
`.draft-heads.safetensors`, which `--plan` passes) and, from the input of the linear that gives
the graph's `logits` (the last hidden state h, after the final norm), adds

    MatMul(h, W_projᵀ) + b → SiLU → Reshape [b, s, H, d] → + h → MatMul(·, W_lm[ids]ᵀ) → [b, s, H, V']

and one output `draft_logits.{j}` [b, s, V'] per head (a Gather along the heads' axis): the
contract of docs/decoding.md, with the manifest's `draft_heads` entry (`heads`, `token_ids`:
the slice, null for the whole vocabulary). W_lm[ids] are the graph's own lm_head columns for the
slice (the heads were trained on the model whose lm_head rows hash to the file's `lm_head.sha256`:
heads for another model are refused). The two MatMuls are linears with module scopes
`draft_heads.proj` and `draft_heads.lm_head`, so `quantize-weights` quantizes them like any
other (or `exclude=draft_heads.*`), and validation compares the outputs with the torch heads
(`mlpdeploy.model.draft_heads.WithDraftHeads`). Run it before `quantize-weights` (a plan's
passes run first): it reads the lm_head's float weights.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.draft_heads import MODULE, OUTPUT_PREFIX, HeadsFile, output_names
from mlpdeploy.passes.base import PassReport, RewritePass
from mlpdeploy.passes.matching import MatchFailure, add_initializer, match_linear, rank, scoped_metadata, unique_name, value_names
from mlpdeploy.passes.options import Option
from mlpdeploy.scopes import module_path


class DraftHeadsPass(RewritePass):
    """Add the plan's draft heads as outputs draft_logits.{j}."""

    name = "draft-heads"
    description = "build a plan's Medusa draft heads (analyze --draft-heads N) into a causal LM as outputs draft_logits.{j}"
    options = {"artifact": Option("", "the plan's heads file (.draft-heads.safetensors; --plan passes it)")}
    reference = ("exact: the graph computes the torch model and its torch draft heads (outputs draft_logits.{j}), which "
                 "validation attaches from the manifest's draft_heads entry and the heads file beside the artifact")

    def rewrite(self, model: ir.Model) -> PassReport:
        path = self.config["artifact"]
        if not path:
            return PassReport(self.name, skipped={"graph": "needs artifact=FILE: the .draft-heads.safetensors of a plan from "
                                                           "`mlpdeploy analyze MODEL --data FILE --draft-heads N` (compile --plan passes it)"})
        file = HeadsFile.read(path)
        graph = model.graph
        logits = next((v for v in graph.outputs if v.name == "logits"), None)
        if logits is None:
            raise MlpdeployError(f"pass draft-heads: the graph has no `logits` output (it has {', '.join(v.name for v in graph.outputs)}); "
                                 "draft heads need a causal LM")
        if any(v.name.startswith(OUTPUT_PREFIX) for v in graph.outputs):
            raise MlpdeployError("pass draft-heads: the graph already has draft-head outputs; run the pass once")
        try:
            lm_head = match_linear(logits)
        except MatchFailure as failure:
            raise MlpdeployError(f"pass draft-heads: the logits do not come from a float linear ({failure.reason}); "
                                 "run draft-heads before passes that rewrite the lm_head (quantize-weights)") from None
        weight = lm_head.weight_array()  # [d, V]
        hidden, vocab = weight.shape
        if rank(lm_head.input) not in (None, 3):
            raise MlpdeployError(f"pass draft-heads: the lm_head reads a rank-{rank(lm_head.input)} value; draft heads need [batch, seq, hidden]")
        if file.hidden != hidden or file.token_ids.min(initial=0) < 0 or file.token_ids.max(initial=0) >= vocab:
            raise MlpdeployError(f"the draft heads in {path} were trained on another model (hidden size {file.hidden}, "
                                 f"token ids up to {int(file.token_ids.max(initial=0))}; this model: hidden {hidden}, vocabulary {vocab}); "
                                 "train them on this model with `mlpdeploy analyze MODEL --data FILE --draft-heads N -o PLAN`")
        columns = weight[:, file.token_ids]
        file.check_rows(columns.T, path)
        head = lm_head.nodes[0]
        outputs = _build(graph, lm_head.input, head, file, columns)
        whole = file.whole_vocabulary(vocab)
        report = PassReport(self.name, rewritten=1, details={
            "artifact": str(path), "heads": file.heads, "hidden": hidden, "slice": int(len(file.token_ids)), "vocab": vocab,
            "lm_head": module_path(head), "outputs": [v.name for v in outputs]})
        report.added_outputs = [{"name": v.name, "dtype": "float32", "shape": ["batch", "seq", int(len(file.token_ids))]} for v in outputs]
        report.manifest = {"draft_heads": {"heads": file.heads, "token_ids": None if whole else [int(t) for t in file.token_ids],
                                           "lm_head": module_path(head), "weights": str(path)}}
        return report


def _build(graph: ir.Graph, h: ir.Value, template: ir.Node, file: HeadsFile, columns: np.ndarray) -> list[ir.Value]:
    taken = value_names(graph)
    heads, hidden = file.heads, file.hidden
    nodes: list[ir.Node] = []

    def const(suffix: str, array: np.ndarray) -> ir.Value:
        return add_initializer(graph, unique_name(f"{MODULE}.{suffix}", taken), np.array(array, order="C"))  # (ascontiguousarray makes scalars 1-D)

    def node(op: str, inputs: list[ir.Value], scope: str, **attributes) -> ir.Value:
        new = ir.node(op, inputs, attributes, name=unique_name(f"{scope}/{op}", taken))
        path = ["", MODULE] if scope == MODULE else ["", MODULE, scope]
        new.metadata_props.update(scoped_metadata(template, path, op.lower(), f"onnx::{op}"))
        new.metadata_props["mlpdeploy.rewritten_by"] = DraftHeadsPass.name
        nodes.append(new)
        return new.outputs[0]

    proj, lm = f"{MODULE}.proj", f"{MODULE}.lm_head"
    u = node("Add", [node("MatMul", [h, const("proj.weight", file.proj_weight.T)], proj), const("proj.bias", file.proj_bias)], proj)
    act = node("Mul", [u, node("Sigmoid", [u], MODULE)], MODULE)
    z = node("Add", [node("Unsqueeze", [h, const("axis", np.array([2], np.int64))], MODULE),
                     node("Reshape", [act, const("shape", np.array([0, 0, heads, hidden], np.int64))], MODULE)], MODULE)
    scores = node("MatMul", [z, const("lm_head.weight", columns.astype(np.float32))], lm)
    outputs = []
    for j, name in enumerate(output_names(heads)):
        out = node("Gather", [scores, const(f"head{j}", np.array(j, np.int64))], MODULE, axis=2)
        out.name = name
        out.dtype, out.shape = ir.DataType.FLOAT, ir.Shape(["batch", "seq", int(columns.shape[1])])
        outputs.append(out)
    graph.extend(nodes)
    graph.outputs.extend(outputs)
    return outputs
