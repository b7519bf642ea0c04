"""fuse-gated-mlp: replace `down(act(gate(x)) * up(x))` by one `mlpdeploy::GatedMLP` node.

Matched (graph walking on onnx_ir, so node metadata_props survive):

* gate/up as two linears of one input x (LLaMA, Mistral, Qwen2), or one gate_up linear cut in
  two halves by Split (num_outputs or sizes), SplitToSequence + SequenceAt, or two Slices
  (Phi-3); whichever half is activated becomes the gate, so a fused weight whose activated half
  comes second is swapped, never silently misread;
* each linear as MatMul(x, W), MatMul(x, Transpose(W)) or Gemm (transB 0/1, alpha/beta folded),
  with an optional constant bias (Add or Gemm's C). W must be constant: an initializer that is
  not a graph input, a Constant, or Cast/Reshape of one (e.g. fp16-stored weights);
* activations SiLU (Sigmoid·Mul, Swish), GELU (Gelu op, com.microsoft Gelu, erf formula),
  tanh-GELU (Gelu approximate=tanh, com.microsoft FastGelu, tanh formula), ReLU, or none
  (bilinear; option `bilinear=false` leaves those alone);
* either operand order of the gating Mul. Main graph only (not If/Loop bodies or functions).

Checks (a failure is recorded in `report.skipped` with its reason): gate and up read the same
x, their halves/shapes/dtypes agree, the product is read only by the down linear, and no value
inside the site is read from outside it. Weights are concatenated/transposed here, once, into
initializers named after the MLP's module (`<scope>.gate_up_proj.weight_t`); those left unread
are removed. The node is named after the module scope and carries the replaced product's
metadata with the scope cut to the MLP module, and the linears it replaced (LINEARS_KEY)."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import DOMAIN, IR_VERSION
from mlpdeploy.passes.base import PassReport, RewritePass
from mlpdeploy.passes.matching import (
    MatchFailure,
    add_initializer,
    check,
    common_scope,
    constant,
    describe,
    remove_dead,
    scoped_metadata,
    unique_name,
    value_names,
)
from mlpdeploy.passes.matching.gated import LINEARS_KEY, Site, gating_products, match_site
from mlpdeploy.passes.options import Option
from mlpdeploy.plugins.gated_mlp.onnx_function import MIN_ONNX_OPSET, OP_TYPE, OPSET_VERSION, ensure_function, gated_mlp_node
from mlpdeploy.scopes import module_path

_ANONYMOUS = re.compile(r"val_\d+")


class FuseGatedMLP(RewritePass):
    """Fuse gated MLPs `down(act(gate(x)) * up(x))` into mlpdeploy::GatedMLP nodes."""

    name = "fuse-gated-mlp"
    description = "fuse down(act(gate(x))*up(x)) (SwiGLU/GeGLU/ReGLU/bilinear) into one mlpdeploy::GatedMLP node"
    options = {"bilinear": Option(True, "also fuse products with no activation, down(gate(x) · up(x))")}

    def rewrite(self, model: ir.Model) -> PassReport:
        report = PassReport(self.name, details={"sites": {}})
        graph = model.graph
        blocker = _model_blocker(model)
        taken, node_names = value_names(graph), {n.name for n in graph if n.name}
        for node in gating_products(graph):
            label = _site_label(node)
            try:
                site = match_site(node, bilinear=self.config["bilinear"])
                check(blocker is None, blocker or "")
                scope = (common_scope(site.nodes) or [""])[-1]
                check(self.site_settings(scope) is not None, f"module {scope or '(root)'} is not among the plan's sites")
            except MatchFailure as failure:
                report.skipped[label] = failure.reason
                continue
            name = apply(model, site, taken, node_names, report.rewritten)
            report.rewritten += 1
            report.details["sites"][name] = {"activation": site.activation, "form": site.form, "hidden": site.hidden}
        if report.rewritten:
            model.ir_version = max(model.ir_version or IR_VERSION, IR_VERSION)  # function overloads need IR v10
        return report


def _model_blocker(model: ir.Model) -> str | None:
    opset = model.opset_imports.get("")
    if opset is None or opset < MIN_ONNX_OPSET:
        return f"the model's ONNX opset {opset} is below {MIN_ONNX_OPSET}, which GatedMLP's function body needs"
    imported = model.opset_imports.get(DOMAIN)
    if imported is not None and imported != OPSET_VERSION:
        return f"the model imports domain {DOMAIN!r} at version {imported}; GatedMLP needs {OPSET_VERSION}"
    return None


def _site_label(node: ir.Node) -> str:
    name = node.name or describe(node.outputs[0])
    module = module_path(node)
    return f"{module} ({name})" if module else name


# ---------------------------------------------------------------- the rewrite


def apply(model: ir.Model, site: Site, taken: set[str], node_names: set[str], index: int) -> str:
    """Replace `site` by one GatedMLP node with weights prepared once; returns the node's name."""
    graph = model.graph
    scope = common_scope(site.nodes)
    module = scope[-1] if scope and scope[-1] else ""
    base = module or f"gated_mlp_{index}"
    h = site.hidden

    named: list[tuple[ir.Value, str]] = []  # initializers and the name each should end up with

    def new(suffix: str, array: np.ndarray) -> ir.Value:
        value = add_initializer(graph, unique_name(f"{base}.{suffix}", taken), array)
        named.append((value, f"{base}.{suffix}"))
        return value

    if site.gate_up is None:
        w_gate_up = new("gate_up_proj.weight_t", np.concatenate([site.gate.weight_array(), site.up.weight_array()], axis=1))
        b_gate, b_up = site.gate.bias_array(), site.up.bias_array()
        b_gate_up = None
        if b_gate is not None or b_up is not None:
            like = b_gate if b_gate is not None else b_up
            zeros = np.zeros(h, dtype=like.dtype)
            b_gate_up = new("gate_up_proj.bias", np.concatenate([zeros if b_gate is None else b_gate, zeros if b_up is None else b_up]))
    else:
        linear = site.gate_up
        w_gate_up = linear.reusable_weight() if site.gate_first else None
        if w_gate_up is None:
            array = linear.weight_array()
            w_gate_up = new("gate_up_proj.weight_t", array if site.gate_first else np.concatenate([array[:, h:], array[:, :h]], axis=1))
        else:
            named.append((w_gate_up, f"{base}.gate_up_proj.weight_t"))
        b_gate_up = linear.reusable_bias() if site.gate_first else None
        if b_gate_up is None and linear.biases:
            array = linear.bias_array()
            b_gate_up = new("gate_up_proj.bias", array if site.gate_first else np.concatenate([array[h:], array[:h]]))
    w_down = site.down.reusable_weight()
    if w_down is None:
        w_down = new("down_proj.weight_t", site.down.weight_array())
    else:
        named.append((w_down, f"{base}.down_proj.weight_t"))
    b_down = site.down.reusable_bias()
    if b_down is None and site.down.biases:
        b_down = new("down_proj.bias", site.down.bias_array())
    if b_down is not None and b_gate_up is None:  # the op has no b_down-only form: a zero b_gate_up
        b_gate_up = new("gate_up_proj.bias", np.zeros(2 * h, dtype=constant(b_down).dtype))

    name = unique_name(module or f"gated_mlp_{index}", node_names)
    node = gated_mlp_node(site.x, w_gate_up, w_down, activation=site.activation, b_gate_up=b_gate_up, b_down=b_down, name=name)
    node.outputs[0].dtype = (site.gate or site.gate_up).dtype  # x's may be unknown in graphs never shape-inferred
    node.metadata_props.update(scoped_metadata(site.product, scope, "gated_mlp", f"{DOMAIN}::{OP_TYPE}"))
    node.metadata_props["mlpdeploy.rewritten_by"] = FuseGatedMLP.name
    linears = {"gate_up": [module_path(lin.nodes[0]) for lin in ([site.gate_up] if site.gate_up else [site.gate, site.up])], "down": [module_path(site.down.nodes[0])]}
    if all(all(paths) for paths in linears.values()):
        node.metadata_props[LINEARS_KEY] = json.dumps(linears)
    old_inputs = [v for n in site.nodes for v in n.inputs]
    last = site.down.nodes[-1]
    ir.convenience.replace_nodes_and_values(graph, last, site.nodes, [node], [site.down.output], [node.outputs[0]])
    ensure_function(model, node)
    taken.difference_update(remove_dead(graph, old_inputs))
    _settle_names(named, taken)
    return name


def _settle_names(named: list[tuple[ir.Value, str]], taken: set[str]) -> None:
    """Give initializers their meant name once the old ones are gone: new ones that got a `_1`
    suffix because an initializer of that name still existed, and reused anonymous `val_N` ones
    (only when nothing else reads them, so the name cannot mislead)."""
    for value, wanted in named:
        anonymous = _ANONYMOUS.fullmatch(value.name or "") and len(value.uses()) == 1 and not value.is_graph_output()
        suffixed = value.name != wanted and (value.name or "").startswith(wanted + "_")
        if (anonymous or suffixed) and value.name != wanted:
            taken.discard(value.name)
            value.name = unique_name(wanted, taken)
