"""fuse-group-rational: replace an elementwise rational activation P(x)/Q(x) by one `mlpdeploy::GroupRational`.

A GR-KAN (KAT) activation written in plain torch exports as a chain of Add/Mul/Abs/Div (some 25
elementwise nodes, each a full pass over the tensor in ONNX Runtime). This pass reads the chain
symbolically (matching/rational.py), recovers the per-channel coefficients, and writes the op:

* coefficients may be scalars or vary along x's last axis ([C] vectors, or [1, …, C]), or x may
  be viewed as [..., G, C/G] by a Reshape that the result is reshaped back from (coefficients
  [G, 1] or [G, C/G]); the channel groups are the coarsest grouping the coefficients allow,
  and a numerator equal in every group becomes a shared [1, m+1] numerator;
* powers as Mul chains, Pow by small integers or Horner's rule; the denominator 1 + Σ|b_i||x|^i
  (form A, also spelled with |b_i x^i| terms) or 1 + |Σ b_i x^i| (form B); a constant term c ≠ 1
  is divided out of P and Q.

Skipped, with the reason in the report: divisions whose denominator uses |·| but is not one of
the forms, among them KAT's pure-torch signed-power variant 1 + Σ|b_i|·x^i (not a GroupRational
form), and sites whose intermediates are read elsewhere. Main graph only.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import DOMAIN
from mlpdeploy.passes.base import PassReport, RewritePass
from mlpdeploy.passes.matching import (
    STANDARD_DOMAINS,
    MatchFailure,
    add_initializer,
    check,
    check_enclosed,
    common_scope,
    describe,
    producer,
    remove_dead,
    scoped_metadata,
    unique_name,
    value_names,
)
from mlpdeploy.passes.matching.rational import SIGNED_POWERS, Rational, match_rational
from mlpdeploy.plugins.group_rational.onnx_function import MIN_ONNX_OPSET, OP_TYPE, OPSET_VERSION, ensure_function, group_rational_node
from mlpdeploy.scopes import module_path


class FuseGroupRational(RewritePass):
    """Fuse elementwise rational activations P(x)/Q(x) into mlpdeploy::GroupRational nodes."""

    name = "fuse-group-rational"
    description = "replace elementwise rational activations P(x)/Q(x) (GR-KAN forms A/B, exported as Add/Mul/Abs/Div) by mlpdeploy::GroupRational"

    def rewrite(self, model: ir.Model) -> PassReport:
        report = PassReport(self.name, details={"sites": {}})
        graph = model.graph
        opset = model.opset_imports.get("")
        imported = model.opset_imports.get(DOMAIN)
        blocker = (
            f"the model's ONNX opset {opset} is below {MIN_ONNX_OPSET}, which GroupRational's function body needs"
            if opset is None or opset < MIN_ONNX_OPSET
            else f"the model imports domain {DOMAIN!r} at version {imported}; GroupRational needs {OPSET_VERSION}"
            if imported not in (None, OPSET_VERSION)
            else None
        )
        taken, node_names = value_names(graph), {n.name for n in graph if n.name}
        for node in list(graph):
            if node.graph is not graph or not _is_candidate(node):
                continue
            try:
                rational = match_rational(node)
                site = _site(rational, node)
                check(blocker is None, blocker or "")
                scope = (common_scope(site.nodes) or [""])[-1]
                check(self.site_settings(scope) is not None, f"module {scope or '(root)'} is not among the plan's sites")
            except MatchFailure as failure:
                if _uses_abs(node) or SIGNED_POWERS in failure.reason:  # a rational look-alike: say why it was left alone
                    report.skipped[_label(node)] = failure.reason
                continue
            name = _apply(model, site, taken, node_names, report.rewritten)
            report.rewritten += 1
            report.details["sites"][name] = {"form": rational.form, "groups": site.groups, "degrees": list(site.degrees),
                                             "shared_numerator": site.numerator.shape[0] == 1}
        return report


def _is_candidate(node: ir.Node) -> bool:
    if node.domain not in STANDARD_DOMAINS or len(node.inputs) != 2:
        return False
    if node.op_type == "Div":
        return True
    return node.op_type == "Mul" and any(producer(v, "Reciprocal") is not None for v in node.inputs)


def _uses_abs(root: ir.Node, depth: int = 12) -> bool:
    """Whether an Abs feeds `root` within `depth` nodes (KAT's signed variant counts: its |b_i| folds away)."""
    stack, seen = [(v, 0) for v in root.inputs], set()
    while stack:
        value, d = stack.pop()
        node = value.producer() if value is not None else None
        if node is None or id(node) in seen or d > depth or node.domain not in STANDARD_DOMAINS:
            continue
        seen.add(id(node))
        if node.op_type == "Abs":
            return True
        stack.extend((v, d + 1) for v in node.inputs)
    return False


def _label(node: ir.Node) -> str:
    name = node.name or describe(node.outputs[0])
    module = module_path(node)
    return f"{module} ({name})" if module else name


class _Site:
    def __init__(self, x, output, nodes, numerator, denominator, form, groups):
        self.x, self.output, self.nodes = x, output, nodes
        self.numerator, self.denominator, self.form, self.groups = numerator, denominator, form, groups

    @property
    def degrees(self) -> tuple[int, int]:
        return self.numerator.shape[1] - 1, self.denominator.shape[1]


def _static(shape) -> list | None:
    return list(shape) if shape is not None else None


def _layout(rational: Rational, root: ir.Node):
    """(op input, value to replace, extra nodes, channels, expand: coefficient → [C] vector)."""
    x, out = rational.x, root.outputs[0]
    reshape = producer(x, "Reshape")
    uses = out.uses()
    back = uses[0].node if len(uses) == 1 and not out.is_graph_output() else None
    if reshape is not None and back is not None and back.op_type == "Reshape" and back.domain in STANDARD_DOMAINS:
        orig, xs, ys, os_ = reshape.inputs[0], _static(x.shape), _static(back.outputs[0].shape), _static(reshape.inputs[0].shape)
        grouped = (
            xs is not None and os_ is not None and ys is not None and len(xs) == len(os_) + 1 and len(ys) == len(os_)
            and all(isinstance(d, int) for d in (*xs[-2:], os_[-1])) and xs[-2] * xs[-1] == os_[-1] and ys[-1] == os_[-1]
            and [str(d) for d in ys[:-1]] == [str(d) for d in os_[:-1]] and [str(d) for d in xs[:-2]] == [str(d) for d in os_[:-1]]
        )
        if grouped:
            groups, per = xs[-2], xs[-1]

            def expand_grouped(a: np.ndarray) -> np.ndarray:
                a = np.asarray(a)
                check(a.ndim <= len(xs) and all(d == 1 for d in a.shape[:-2]), f"a coefficient of shape {list(a.shape)} varies along a leading axis")
                return np.broadcast_to(a.reshape(a.shape[-2:]) if a.ndim >= 2 else a, (groups, per)).reshape(-1)

            return orig, back.outputs[0], [reshape, back], os_[-1], expand_grouped
    xs = _static(x.shape)
    check(xs is not None and len(xs) >= 1 and isinstance(xs[-1], int), f"input {describe(x)} has no static last dim (channels)")
    channels = xs[-1]

    def expand(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        check(a.ndim <= len(xs) and all(d == 1 for d in a.shape[:-1]), f"a coefficient of shape {list(a.shape)} varies along an axis other than the last")
        return np.broadcast_to(a.reshape(-1) if a.ndim else a, (channels,))

    return x, out, [], channels, expand


def _groups(rows: np.ndarray) -> int:
    """The fewest groups of equal consecutive rows that `rows` [C, k] splits into (a divisor of C)."""
    channels = rows.shape[0]
    for groups in range(1, channels + 1):
        if channels % groups == 0 and all(np.all(block == block[:1]) for block in rows.reshape(groups, channels // groups, -1)):
            return groups
    return channels


def _site(rational: Rational, root: ir.Node) -> _Site:
    x, output, extra, channels, expand = _layout(rational, root)
    scale = expand(rational.scale)
    m, n = max(rational.numerator, default=0), max(rational.denominator)
    zero = np.zeros(())
    num = np.stack([expand(rational.numerator.get(k, zero)) for k in range(m + 1)], axis=1) / scale[:, None]
    den = np.stack([expand(rational.denominator.get(k, zero)) for k in range(1, n + 1)], axis=1) / scale[:, None]
    groups = _groups(np.concatenate([num, den], axis=1))
    per = channels // groups
    shared = np.all(num == num[:1])
    nodes = [*extra, *rational.nodes]
    check_enclosed(nodes, output)
    check(x.dtype in (None, ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16), f"input {describe(x)} is {x.dtype}, not a float type")
    return _Site(x, output, nodes, num[:1] if shared else num[::per], den[::per], rational.form, groups)


def _apply(model: ir.Model, site: _Site, taken: set[str], node_names: set[str], index: int) -> str:
    graph = model.graph
    scope = common_scope(site.nodes)
    base = (scope[-1] if scope and scope[-1] else "") or f"group_rational_{index}"
    dtype = (site.x.dtype or ir.DataType.FLOAT).numpy()
    numerator = add_initializer(graph, unique_name(f"{base}.numerator", taken), site.numerator.astype(dtype))
    denominator = add_initializer(graph, unique_name(f"{base}.denominator", taken), site.denominator.astype(dtype))
    name = unique_name(base, node_names)
    node = group_rational_node(site.x, numerator, denominator, form=site.form, name=name)
    node.outputs[0].shape, node.outputs[0].dtype = site.output.shape, site.output.dtype or site.x.dtype
    root = next(n for n in site.nodes if site.output in n.outputs)
    node.metadata_props.update(scoped_metadata(root, scope, "group_rational", f"{DOMAIN}::{OP_TYPE}"))
    node.metadata_props["mlpdeploy.rewritten_by"] = FuseGroupRational.name
    old_inputs = [v for n in site.nodes for v in n.inputs]
    ir.convenience.replace_nodes_and_values(graph, root, site.nodes, [node], [site.output], [node.outputs[0]])
    ensure_function(model, node)
    taken.difference_update(remove_dead(graph, old_inputs))
    return name
