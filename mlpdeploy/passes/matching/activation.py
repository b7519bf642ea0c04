"""Activations recognized in their exported forms (SiLU, GELU erf/tanh, ReLU)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx_ir as ir

from mlpdeploy.contract import MS_DOMAIN
from mlpdeploy.passes.matching.core import STANDARD_DOMAINS, close, float_attr, producer, scalar

# ---------------------------------------------------------------- activations


@dataclass
class Activation:
    kind: str  # silu, gelu, gelu_tanh, relu
    input: ir.Value
    nodes: list[ir.Node]


SQRT_HALF = 1.0 / math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def match_activation(value: ir.Value | None) -> Activation | None:
    """Recognize `value = act(a)`: Relu; SiLU as Sigmoid·Mul or Swish(alpha=1); GELU as the
    Gelu op (opset 20, approximate none/tanh), com.microsoft Gelu/FastGelu, or the erf and
    tanh formulas in their exported shapes (any Mul/Div nesting, Pow or x·x·x)."""
    node = value.producer() if value is not None else None
    if node is None or not node.inputs or node.inputs[0] is None:
        return None
    op, a = node.op_type, node.inputs[0]
    if node.domain == MS_DOMAIN:
        if op == "Gelu":
            return Activation("gelu", a, [node])
        if op == "FastGelu" and len([i for i in node.inputs if i is not None]) == 1:
            return Activation("gelu_tanh", a, [node])
        return None
    if node.domain not in STANDARD_DOMAINS:
        return None
    if op == "Relu":
        return Activation("relu", a, [node])
    if op == "Gelu":
        approximate = node.attributes.get_string("approximate", "none")
        return Activation("gelu_tanh" if approximate == "tanh" else "gelu", a, [node])
    if op == "Swish" and close(float_attr(node, "alpha", 1.0), 1.0):
        return Activation("silu", a, [node])
    if op == "Mul" and len(node.inputs) == 2:
        for x, s in (node.inputs, node.inputs[::-1]):
            sigmoid = producer(s, "Sigmoid")
            if sigmoid is not None and x is not None and sigmoid.inputs[0] is x:
                return Activation("silu", x, [sigmoid, node])
        return _match_gelu_formula(value)
    if op == "Div":
        return _match_gelu_formula(value)
    return None


def _match_gelu_formula(value: ir.Value) -> Activation | None:
    """0.5·x·(1 + Erf(x/√2)) or 0.5·x·(1 + Tanh(√(2/π)·(x + 0.044715·x³)))."""
    coefficient, factors, nodes = product_factors(value)
    if len(factors) != 2 or not close(coefficient, 0.5):
        return None
    for x, one_plus in (factors, factors[::-1]):
        add = producer(one_plus, "Add")
        if add is None or len(add.inputs) != 2:
            continue
        for c, e in (add.inputs, add.inputs[::-1]):
            fn = producer(e, "Erf", "Tanh")
            if fn is None or scalar(c) is None or not close(scalar(c), 1.0):
                continue
            found = polynomial(fn.inputs[0], x)
            if found is None:
                continue
            poly, poly_nodes = found
            if fn.op_type == "Erf":
                ok, kind = _poly_is(poly, {1: SQRT_HALF}), "gelu"
            else:
                ok, kind = _poly_is(poly, {1: SQRT_2_OVER_PI, 3: SQRT_2_OVER_PI * 0.044715}), "gelu_tanh"
            if ok:
                return Activation(kind, x, [*poly_nodes, fn, add, *nodes])
    return None


def _poly_is(poly: dict[int, float], expected: dict[int, float]) -> bool:
    terms = {k: v for k, v in poly.items() if v != 0.0}
    return terms.keys() == expected.keys() and all(close(terms[k], expected[k]) for k in expected)


def product_factors(value: ir.Value) -> tuple[float, list[ir.Value], list[ir.Node]]:
    """Flatten a Mul/Div-by-constant tree: value = coefficient · Π factors.

    The root is always expanded; inner Mul/Div nodes only when their output has one use (a
    value used elsewhere, like x in x·(1+erf(x/√2)), stays a factor)."""
    coefficient, factors, nodes = 1.0, [], []

    def visit(v: ir.Value, root: bool) -> None:
        nonlocal coefficient
        c = scalar(v)
        if c is not None:
            coefficient *= c
            return
        node = producer(v, "Mul", "Div")
        if node is None or len(node.inputs) != 2 or (not root and (len(v.uses()) != 1 or v.is_graph_output())):
            factors.append(v)
            return
        a, b = node.inputs
        if node.op_type == "Div":
            divisor = scalar(b)
            if divisor is None or divisor == 0.0:
                factors.append(v)
                return
            coefficient /= divisor
            nodes.append(node)
            visit(a, False)
            return
        nodes.append(node)
        visit(a, False)
        visit(b, False)

    visit(value, True)
    return coefficient, factors, nodes


def polynomial(value: ir.Value | None, x: ir.Value, depth: int = 12) -> tuple[dict[int, float], list[ir.Node]] | None:
    """`value` as a polynomial in `x` ({degree: coefficient}) through Add/Sub/Mul/Div-by-constant/
    Pow-by-small-integer/Neg, with the nodes it went through; None if it is not one."""
    if value is None or depth == 0:
        return None
    if value is x:
        return {1: 1.0}, []
    c = scalar(value)
    if c is not None:
        return {0: c}, []
    node = producer(value, "Add", "Sub", "Mul", "Div", "Pow", "Neg")
    if node is None:
        return None
    parts = [polynomial(i, x, depth - 1) if node.op_type != "Pow" or k == 0 else None for k, i in enumerate(node.inputs)]
    op = node.op_type
    if op == "Neg" and parts[0] is not None:
        poly = {k: -v for k, v in parts[0][0].items()}
        return poly, [*parts[0][1], node]
    if op == "Pow":
        exponent = scalar(node.inputs[1])
        if parts[0] is None or exponent is None or exponent not in (1.0, 2.0, 3.0, 4.0):
            return None
        poly = {0: 1.0}
        for _ in range(int(exponent)):
            poly = _poly_mul(poly, parts[0][0])
        return poly, [*parts[0][1], node]
    if op == "Div":
        divisor = scalar(node.inputs[1])
        if parts[0] is None or divisor is None or divisor == 0.0:
            return None
        return {k: v / divisor for k, v in parts[0][0].items()}, [*parts[0][1], node]
    if len(parts) != 2 or parts[0] is None or parts[1] is None:
        return None
    (p, p_nodes), (q, q_nodes) = parts
    if op == "Mul":
        poly = _poly_mul(p, q)
    else:
        sign = -1.0 if op == "Sub" else 1.0
        poly = dict(p)
        for k, v in q.items():
            poly[k] = poly.get(k, 0.0) + sign * v
    return poly, [*p_nodes, *q_nodes, node]


def _poly_mul(p: dict[int, float], q: dict[int, float]) -> dict[int, float]:
    out: dict[int, float] = {}
    for i, a in p.items():
        for j, b in q.items():
            out[i + j] = out.get(i + j, 0.0) + a * b
    return out
