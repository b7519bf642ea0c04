"""Gated-MLP sites, `down(act(gate(x)) * up(x))`: the pattern and its checks, shared by the passes
that rewrite them (fuse-gated-mlp, sparse-mlp) and read by quantize-weights (LINEARS_KEY).

* `gating_products(graph)`: the Muls worth trying (one operand is a linear, an activation of
  one, or a piece of one; not inside a recognized activation; not itself an operand of such a
  product);
* `match_site(product)`: the whole site around one of them — gate and up as two linears of one
  input, or one gate_up linear cut in halves (Split, SplitToSequence + SequenceAt, two Slices),
  the activation, the down linear — or `MatchFailure(why not)`;
* `match_down(node, hidden)`: the linear that is the only reader of `node`'s output (a gated
  product, or a ReLU MLP's activation).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import onnx_ir as ir

from mlpdeploy.passes.matching.activation import match_activation
from mlpdeploy.passes.matching.core import (
    LINEAR_OPS,
    STANDARD_DOMAINS,
    MatchFailure,
    check,
    constant,
    describe,
    fail,
    int_attr,
    is_constant,
    op_label,
    producer,
    rank,
    scalar,
)
from mlpdeploy.passes.matching.graph import check_enclosed
from mlpdeploy.passes.matching.linear import Linear, looks_linear, match_linear

LINEARS_KEY = "mlpdeploy.gated_mlp.linears"  # GatedMLP node metadata: the torch linears fused, {"gate_up": [module paths], "down": [...]}
PART_OPS = ("Split", "SequenceAt", "Slice")


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


def gating_products(graph: ir.Graph) -> Iterator[ir.Node]:
    """The main graph's Muls that may be a gated MLP's product (see `_is_candidate`), in graph
    order, each judged when it is reached: a caller may rewrite the graph between them (a node
    an earlier rewrite removed is not given)."""
    inside = _activation_nodes(graph)
    for node in list(graph):
        if node.graph is graph and _is_candidate(node, inside):
            yield node


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
    site.down = match_down(product, site.hidden)
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


def match_down(node: ir.Node, hidden: int) -> Linear:
    """The down linear: the only reader of `node`'s output (with its bias), taking `hidden` inputs."""
    p = node.outputs[0]
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
