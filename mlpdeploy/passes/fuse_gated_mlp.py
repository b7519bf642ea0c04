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
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import DOMAIN, IR_VERSION
from mlpdeploy.passes.base import PassReport, RewritePass
from mlpdeploy.passes.matching import (
    LINEAR_OPS,
    STANDARD_DOMAINS,
    Linear,
    MatchFailure,
    add_initializer,
    check,
    check_enclosed,
    common_scope,
    constant,
    describe,
    fail,
    int_attr,
    is_constant,
    looks_linear,
    match_activation,
    match_linear,
    op_label,
    producer,
    rank,
    remove_dead,
    scalar,
    scoped_metadata,
    unique_name,
    value_names,
)
from mlpdeploy.passes.options import Option
from mlpdeploy.plugins.gated_mlp.onnx_function import MIN_ONNX_OPSET, OP_TYPE, OPSET_VERSION, ensure_function, gated_mlp_node
from mlpdeploy.scopes import module_path

LINEARS_KEY = "mlpdeploy.gated_mlp.linears"  # node metadata: the torch linears fused, {"gate_up": [module paths], "down": [...]}

PART_OPS = ("Split", "SequenceAt", "Slice")
_ANONYMOUS = re.compile(r"val_\d+")


@dataclass
class Part:
    """One piece of a tensor cut along `axis`; `columns(width)` gives its [start, stop)."""

    source: ir.Value
    axis: int
    columns: object  # Callable[[int], tuple[int, int]]
    nodes: list[ir.Node]


@dataclass
class Site:
    x: ir.Value
    activation: str
    hidden: int
    product: ir.Node | None = None
    down: Linear | None = None
    gate: Linear | None = None  # separate gate and up linears
    up: Linear | None = None
    gate_up: Linear | None = None  # one linear cut in halves
    gate_first: bool = True
    nodes: list[ir.Node] = field(default_factory=list)

    @property
    def form(self) -> str:
        return "separate" if self.gate_up is None else "fused gate_up" + ("" if self.gate_first else " (gate second, swapped)")


class FuseGatedMLP(RewritePass):
    """Fuse gated MLPs `down(act(gate(x)) * up(x))` into mlpdeploy::GatedMLP nodes."""

    name = "fuse-gated-mlp"
    description = "fuse down(act(gate(x))*up(x)) (SwiGLU/GeGLU/ReGLU/bilinear) into one mlpdeploy::GatedMLP node"
    options = {"bilinear": Option(True, "also fuse products with no activation, down(gate(x) · up(x))")}

    def rewrite(self, model: ir.Model) -> PassReport:
        report = PassReport(self.name, details={"sites": {}})
        graph = model.graph
        blocker = _model_blocker(model)
        in_activations = _activation_nodes(graph)
        taken, node_names = value_names(graph), {n.name for n in graph if n.name}
        for node in list(graph):
            if node.graph is not graph or not _is_candidate(node, in_activations):
                continue
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


def _activation_nodes(graph: ir.Graph) -> set[int]:
    """Nodes inside a recognized activation (SiLU's Mul, GELU's Muls): never gating products."""
    inside: set[int] = set()
    for node in graph:
        if node.op_type in ("Mul", "Div") and node.domain in STANDARD_DOMAINS:
            act = match_activation(node.outputs[0])
            if act is not None:
                inside.update(map(id, act.nodes))
    return inside


def _looks_part(value: ir.Value) -> bool:
    node = producer(value, *PART_OPS)
    if node is None:
        return False
    if node.op_type == "SequenceAt":
        node = producer(node.inputs[0], "SplitToSequence")
    return node is not None and looks_linear(node.inputs[0])


def _is_candidate(node: ir.Node, in_activations: set[int]) -> bool:
    """A Mul of two computed values, one of which is (an activation of) a linear or a piece of one,
    and which is not itself an operand of such a product (then it is part of an activation
    GatedMLP does not know, e.g. x·sigmoid(1.702x), and the product reports it)."""
    if node.op_type != "Mul" or node.domain not in STANDARD_DOMAINS or len(node.inputs) != 2 or id(node) in in_activations:
        return False
    if any(v is None or is_constant(v) for v in node.inputs):
        return False
    return _has_linear_operand(node) and not _feeds_a_product(node)


def _has_linear_operand(node: ir.Node) -> bool:
    for value in node.inputs:
        act = match_activation(value)
        source = act.input if act is not None else value
        if looks_linear(source) or _looks_part(source):
            return True
    return False


def _feeds_a_product(node: ir.Node) -> bool:
    out = node.outputs[0]
    uses = out.uses()
    if len(uses) != 1 or out.is_graph_output():
        return False
    reader = uses[0].node
    if reader.op_type != "Mul" or reader.domain not in STANDARD_DOMAINS or len(reader.inputs) != 2:
        return False
    other = reader.inputs[1 - uses[0].idx]
    return other is not None and (looks_linear(other) or _looks_part(other))


def _site_label(node: ir.Node) -> str:
    name = node.name or describe(node.outputs[0])
    module = module_path(node)
    return f"{module} ({name})" if module else name


def _branch(role: str, matcher, value):
    try:
        return matcher(value)
    except MatchFailure as failure:
        fail(f"{role}: {failure.reason}")


def match_site(product: ir.Node, bilinear: bool = True) -> Site:
    """Match the gated MLP whose gating product is `product`, or raise MatchFailure(why not)."""
    a, b = product.inputs
    acts = match_activation(a), match_activation(b)
    check(acts[0] is None or acts[1] is None, f"both operands of the product are activated ({acts[0] and acts[0].kind}, {acts[1] and acts[1].kind})")
    act = acts[0] or acts[1]
    gate_op, up_op = (b, a) if acts[1] is not None else (a, b)
    kind = act.kind if act is not None else "none"
    check(kind != "none" or bilinear, "no activation (bilinear) and option bilinear=false")
    gate_src = act.input if act is not None else gate_op
    check(gate_src is not up_op, f"gate and up are the same value {describe(up_op)}")
    nodes = [product, *(act.nodes if act is not None else [])]
    gate_cut, up_cut = producer(gate_src, *PART_OPS), producer(up_op, *PART_OPS)
    if (gate_cut is None) != (up_cut is None):
        role, cut, other = ("gate", gate_cut, up_op) if gate_cut is not None else ("up", up_cut, gate_src)
        fail(f"{role} is a {cut.op_type} piece but the other operand comes from {op_label(other)}: not one gate_up linear cut in halves")
    site = _match_fused(gate_src, up_op, kind) if gate_cut is not None else _match_separate(gate_src, up_op, kind)
    site.product = product
    site.down = _match_down(product, site.hidden)
    site.nodes = _unique([*nodes, *site.nodes, *site.down.nodes])
    check_enclosed(site.nodes, site.down.output)
    dtypes = {lin.dtype for lin in (site.gate, site.up, site.gate_up, site.down) if lin is not None}
    check(len(dtypes) == 1, f"weights have different dtypes: {sorted(str(d) for d in dtypes)}")
    dtype = dtypes.pop()
    check(site.x.dtype is None or site.x.dtype == dtype, f"input {describe(site.x)} is {site.x.dtype} but the weights are {dtype}")
    d = (site.gate or site.gate_up).in_features
    last = site.x.shape[-1] if site.x.shape is not None and len(site.x.shape) else None
    check(not isinstance(last, int) or last == d, f"input {describe(site.x)} has last dim {last}, the weights expect {d}")
    return site


# Ops an activation GatedMLP does not recognize ends in: an operand from one is neither a linear
# nor a known activation of one, and the reason says so. (Add is a linear's bias, not listed.)
ELEMENTWISE = frozenset({"Mul", "Div", "Sub", "Sigmoid", "Tanh", "Erf", "Pow", "Exp", "Neg", "Softplus", "HardSigmoid", "Clip"})


def _match_separate(gate_src: ir.Value, up_src: ir.Value, kind: str) -> Site:
    for value in (gate_src, up_src) if kind == "none" else ():
        source = producer(value, *ELEMENTWISE)
        check(
            source is None,
            f"{describe(value)} comes from {source and source.op_type}, which is neither a linear (MatMul/Gemm) nor one of "
            "GatedMLP's activations (SiLU, GELU, tanh-GELU, ReLU) of one",
        )
    gate = _branch("gate", match_linear, gate_src)
    up = _branch("up", match_linear, up_src)
    check(gate.input is up.input, f"gate and up linears read different inputs ({describe(gate.input)} vs {describe(up.input)})")
    check(
        (gate.in_features, gate.out_features) == (up.in_features, up.out_features),
        f"gate weight [{gate.in_features}, {gate.out_features}] and up weight [{up.in_features}, {up.out_features}] differ",
    )
    return Site(gate.input, kind, gate.out_features, gate=gate, up=up, nodes=[*gate.nodes, *up.nodes])


def _match_fused(gate_src: ir.Value, up_src: ir.Value, kind: str) -> Site:
    gate_part = _branch("gate", match_part, gate_src)
    up_part = _branch("up", match_part, up_src)
    check(gate_part.source is up_part.source, f"gate and up are cut from different tensors ({describe(gate_part.source)} vs {describe(up_part.source)})")
    linear = _branch("gate_up", match_linear, gate_part.source)
    width = linear.out_features
    last = rank(linear.input) or (2 if linear.nodes[0].op_type == "Gemm" else None)
    for role, part in (("gate", gate_part), ("up", up_part)):
        check(part.axis == -1 or (last is not None and part.axis == last - 1), f"{role} is cut along axis {part.axis}, not the last axis")
    half = width // 2
    gate_cols, up_cols = gate_part.columns(width), up_part.columns(width)
    check(
        width % 2 == 0 and {gate_cols, up_cols} == {(0, half), (half, width)},
        f"gate takes columns {list(gate_cols)} and up {list(up_cols)} of {width}; GatedMLP needs the two halves",
    )
    gate_first = kind == "none" or gate_cols == (0, half)  # a bilinear product is symmetric: keep the layout
    nodes = [*linear.nodes, *gate_part.nodes, *up_part.nodes]
    return Site(linear.input, kind, half, gate_up=linear, gate_first=gate_first, nodes=nodes)


def _match_down(product: ir.Node, hidden: int) -> Linear:
    p = product.outputs[0]
    check(not p.is_graph_output(), f"the product {describe(p)} is a graph output")
    uses = p.uses()
    check(len(uses) == 1, f"the product {describe(p)} has {len(uses)} readers; the down linear must be the only one")
    reader, index = uses[0].node, uses[0].idx
    check(
        reader.op_type in LINEAR_OPS and reader.domain in STANDARD_DOMAINS and index == 0,
        f"the product {describe(p)} is read by {reader.op_type} {reader.name!r}, not as the data input of a linear",
    )
    out = reader.outputs[0]
    down = None
    after = out.uses()
    if len(after) == 1 and not out.is_graph_output() and after[0].node.op_type == "Add":
        try:
            down = match_linear(after[0].node.outputs[0])
        except MatchFailure:
            down = None  # an Add that is not a bias (e.g. the residual): the MLP ends at the linear
    down = down or _branch("down", match_linear, out)
    check(down.input is p, f"the down linear reads {describe(down.input)}, not the product")
    check(down.in_features == hidden, f"down weight has {down.in_features} inputs, the gated hidden width is {hidden}")
    return down


def match_part(value: ir.Value) -> Part:
    """`value` as a piece of a tensor cut by Split, SplitToSequence + SequenceAt, or Slice."""
    node = producer(value, *PART_OPS)
    check(node is not None, f"{describe(value)} comes from {op_label(value)}, not a linear or a Split/Slice of one")
    if node.op_type == "Split":
        index = next(i for i, o in enumerate(node.outputs) if o is value)
        sizes = _split_sizes(node, node.inputs[1] if len(node.inputs) > 1 else None, "split")
        count = len(node.outputs)
        return Part(node.inputs[0], int_attr(node, "axis", 0), lambda w: _chunk(w, sizes, count, index), [node])
    if node.op_type == "SequenceAt":
        to_seq = producer(node.inputs[0], "SplitToSequence")
        check(to_seq is not None, f"SequenceAt {node.name!r} reads {op_label(node.inputs[0])}, not SplitToSequence")
        position = scalar(node.inputs[1])
        check(position is not None, f"SequenceAt {node.name!r} has a position that is not a constant")
        split = constant(to_seq.inputs[1]) if len(to_seq.inputs) > 1 and to_seq.inputs[1] is not None else None
        check(split is not None or len(to_seq.inputs) < 2 or to_seq.inputs[1] is None, f"SplitToSequence {to_seq.name!r} sizes are not constant")

        def columns(width: int) -> tuple[int, int]:
            if split is None:
                sizes = [1] * width
            elif split.ndim == 0:
                step = int(split)
                sizes = [step] * (width // step) + ([width % step] if width % step else [])
            else:
                sizes = [int(s) for s in split]
            i = int(position) + (len(sizes) if position < 0 else 0)
            return _chunk(width, sizes, len(sizes), i) if 0 <= i < len(sizes) else (-1, -1)

        return Part(to_seq.inputs[0], int_attr(to_seq, "axis", 0), columns, [to_seq, node])
    inputs = [*node.inputs, None, None, None][:5]
    starts, ends, axes, steps = (constant(v) if v is not None else None for v in inputs[1:5])
    check(starts is not None and ends is not None, f"Slice {node.name!r} bounds are not constant")
    check(starts.size == 1 and ends.size == 1, f"Slice {node.name!r} cuts {starts.size} axes, not one")
    check(steps is None or int(steps.reshape(-1)[0]) == 1, f"Slice {node.name!r} has a step other than 1")
    check(inputs[3] is None or axes is not None, f"Slice {node.name!r} axes are not constant")
    axis = int(axes.reshape(-1)[0]) if axes is not None else 0
    start, end = int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0])

    def slice_columns(width: int) -> tuple[int, int]:
        lo, hi = (s + width if s < 0 else s for s in (start, end))
        return max(0, min(lo, width)), max(0, min(hi, width))

    return Part(node.inputs[0], axis, slice_columns, [node])


def _split_sizes(node: ir.Node, sizes_input: ir.Value | None, attr: str) -> list[int] | None:
    if sizes_input is not None:
        sizes = constant(sizes_input)
        check(sizes is not None, f"Split {node.name!r} sizes are not constant")
        return [int(s) for s in sizes.reshape(-1)]
    attribute = node.attributes.get(attr)
    return list(attribute.as_ints()) if attribute is not None else None


def _chunk(width: int, sizes: list[int] | None, count: int, index: int) -> tuple[int, int]:
    if sizes is None:  # equal pieces (the last one smaller when width does not divide)
        step = -(-width // count)
        sizes = [min(step, max(0, width - k * step)) for k in range(count)]
    start = sum(sizes[:index])
    return start, start + sizes[index]


def _unique(nodes: list[ir.Node]) -> list[ir.Node]:
    seen, out = set(), []
    for node in nodes:
        if id(node) not in seen:
            seen.add(id(node))
            out.append(node)
    return out


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
