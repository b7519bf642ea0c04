"""Rational functions of one tensor, recognized in their elementwise exported form.

`match_rational(div)` reads y = N/Q at a Div (or N·Reciprocal(Q)) as polynomials in one value x
whose coefficients are constant tensors broadcast against x: the numerator a polynomial in x,
the denominator either a polynomial in |x| with non-negative coefficients (GroupRational form A,
1 + Σ|b_i||x|^i) or c + |S(x)| with S(0) = 0 (form B). The walk goes through Add, Sub, Mul,
Neg, Abs, Pow (small integer exponent), Div by a constant, Identity, and stops at constants;
x is the nearest value from which every non-constant path starts. A denominator that is a
polynomial in x itself (KAT's pure-torch signed-power variant, 1 + Σ|b_i|·x^i) is named as such
and not matched: it is not a GroupRational form.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from mlpdeploy.passes.matching.core import MatchFailure, check, constant, describe, fail, is_constant, op_label, producer

WALK_OPS = ("Add", "Sub", "Mul", "Neg", "Abs", "Pow", "Div", "Identity", "Reciprocal")
MAX_DEGREE = 16
MAX_SITE_NODES = 400
SIGNED_POWERS = "signed powers"


@dataclass
class Poly:
    """Σ terms[k]·t^k, t = x (var "x"), |x| (var "|x|"), or none (var "": a constant)."""

    var: str
    terms: dict[int, np.ndarray]

    @property
    def degree(self) -> int:
        return max(self.terms, default=0)


@dataclass
class AbsPoly:
    """|S(x)| for a polynomial S in x."""

    poly: Poly


@dataclass
class Shifted:
    """c + |S(x)|."""

    const: np.ndarray
    poly: Poly


@dataclass
class Rational:
    """y = numerator(x) / denominator(x), as recognized."""

    x: ir.Value
    form: str  # "A" or "B"
    numerator: dict[int, np.ndarray]  # power of x -> coefficient (broadcast against x)
    denominator: dict[int, np.ndarray]  # form A: power of |x| -> |b_i| (≥ 0); form B: power of x -> b_i
    scale: np.ndarray  # the denominator's constant term: N and Q are divided by it
    nodes: list[ir.Node] = field(default_factory=list)


def _const(array: np.ndarray) -> Poly:
    return Poly("", {0: np.asarray(array, dtype=np.float64)})


def _var(p: Poly, q: Poly) -> str:
    check(not (p.var and q.var and p.var != q.var), f"mixes a polynomial in {p.var} with one in {q.var}")
    return p.var or q.var


def _add(p, q, sign: float = 1.0):
    if isinstance(p, Poly) and isinstance(q, Poly):
        terms = dict(p.terms)
        for k, v in q.terms.items():
            terms[k] = terms[k] + sign * v if k in terms else sign * v
        return Poly(_var(p, q), terms)
    for a, b in ((p, q), (q, p)):
        if isinstance(a, AbsPoly) and isinstance(b, Poly) and not b.var and sign > 0:
            return Shifted(b.terms.get(0, np.zeros(())), a.poly)
    fail("adds terms that are not one polynomial plus a constant")


def _mul(p, q) -> Poly:
    check(isinstance(p, Poly) and isinstance(q, Poly), "multiplies an absolute value of a polynomial")
    terms: dict[int, np.ndarray] = {}
    for i, a in p.terms.items():
        for j, b in q.terms.items():
            check(i + j <= MAX_DEGREE, f"degree above {MAX_DEGREE}")
            terms[i + j] = terms[i + j] + a * b if i + j in terms else a * b
    return Poly(_var(p, q), terms)


def _abs(p):
    check(isinstance(p, Poly), "takes the absolute value of a sum with an absolute value in it")
    nonzero = {k: v for k, v in p.terms.items() if np.any(v != 0)}
    if not p.var:
        return _const(np.abs(p.terms.get(0, np.zeros(()))))
    if p.var == "|x|" and all(np.all(v >= 0) for v in nonzero.values()):
        return p
    if p.var == "x" and len(nonzero) == 1:  # |c·x^k| = |c|·|x|^k
        (k, v), = nonzero.items()
        return Poly("|x|", {k: np.abs(v)})
    check(p.var == "x" and 0 not in nonzero, f"takes |·| of a polynomial in {p.var} with a constant term")
    return AbsPoly(p)


class _Walk:
    """Evaluates values as polynomials in `leaf`, recording the nodes it goes through."""

    def __init__(self, leaf: ir.Value):
        self.leaf = leaf
        self.nodes: dict[int, ir.Node] = {}
        self.memo: dict[int, object] = {}

    def value(self, v: ir.Value | None):
        check(v is not None, "an input is missing")
        if v is self.leaf:
            return Poly("x", {1: np.ones(())})
        if id(v) in self.memo:
            return self.memo[id(v)]
        array = constant(v) if is_constant(v) else None
        if array is not None:
            result = _const(array)
        else:
            node = producer(v, *WALK_OPS)
            check(node is not None, f"also reads {describe(v)} (from {op_label(v)}), a second non-constant value")
            self.nodes[id(node)] = node
            result = self._node(node)
        self.memo[id(v)] = result
        return result

    def _node(self, node: ir.Node):
        op, args = node.op_type, node.inputs
        if op == "Identity":
            return self.value(args[0])
        if op == "Neg":
            return _mul(_const(-1.0), self.value(args[0]))
        if op == "Abs":
            return _abs(self.value(args[0]))
        if op == "Pow":
            exponent = constant(args[1])
            check(exponent is not None and exponent.size == 1 and float(exponent) in range(0, 9), f"Pow {node.name!r} exponent is not a small integer")
            base, result = self.value(args[0]), _const(1.0)
            for _ in range(int(exponent.reshape(-1)[0])):
                result = _mul(result, base)
            return result
        if op == "Div":
            divisor = constant(args[1]) if is_constant(args[1]) else None
            check(divisor is not None and np.all(divisor != 0), f"Div {node.name!r} divides by a non-constant (a second rational)")
            return _mul(self.value(args[0]), _const(1.0 / divisor.astype(np.float64)))
        check(op in ("Add", "Sub", "Mul") and len(args) == 2, f"{op} {node.name!r} is not part of a polynomial")
        a, b = self.value(args[0]), self.value(args[1])
        return _mul(a, b) if op == "Mul" else _add(a, b, -1.0 if op == "Sub" else 1.0)


def _quotient(root: ir.Node) -> tuple[ir.Value, ir.Value, list[ir.Node]]:
    """(numerator, denominator, root nodes) of Div(N, Q) or Mul(N, Reciprocal(Q))."""
    if root.op_type == "Div":
        return root.inputs[0], root.inputs[1], [root]
    for n, r in (root.inputs, root.inputs[::-1]):
        reciprocal = producer(r, "Reciprocal")
        if reciprocal is not None:
            return n, reciprocal.inputs[0], [root, reciprocal]
    fail("not a division")


def _candidates(numerator: ir.Value, denominator: ir.Value) -> list[ir.Value]:
    """Non-constant values feeding N and Q through walkable ops, nearest first."""
    seen, order, queue = set(), [], deque([numerator, denominator])
    while queue and len(order) < MAX_SITE_NODES:
        v = queue.popleft()
        if v is None or id(v) in seen or is_constant(v):
            continue
        seen.add(id(v))
        order.append(v)
        node = producer(v, *WALK_OPS)
        if node is not None:
            queue.extend(node.inputs)
    return order


def _denominator(q) -> tuple[str, dict[int, np.ndarray], np.ndarray]:
    """(form, terms, constant term) of a denominator, or why it is none of the forms."""
    if isinstance(q, Shifted):  # _abs made sure S has no constant term
        return "B", {k: v for k, v in q.poly.terms.items() if k > 0}, np.asarray(q.const)
    check(isinstance(q, Poly), "the denominator is |S(x)| alone, with no constant added")
    check(q.var != "x", f"the denominator is a polynomial in x with {SIGNED_POWERS} (as KAT's pure-torch variant 1 + Σ|b_i|·x^i), not form A or B")
    check(q.var == "|x|", "the denominator is a constant")
    terms = {k: v for k, v in q.terms.items() if k > 0}
    check(all(np.all(v >= 0) for v in terms.values()), "a denominator coefficient of |x|^i is negative (form A needs |b_i|)")
    return "A", terms, np.asarray(q.terms.get(0, np.zeros(())))


def match_rational(root: ir.Node) -> Rational:
    """The rational function computed at `root` (a Div, or a Mul by a Reciprocal), or MatchFailure(why not)."""
    numerator, denominator, root_nodes = _quotient(root)
    check(not is_constant(numerator) and not is_constant(denominator), "numerator or denominator is a constant")
    reasons = []
    for leaf in _candidates(numerator, denominator):
        walk = _Walk(leaf)
        try:
            p, q = walk.value(numerator), walk.value(denominator)
            check(isinstance(p, Poly) and p.var in ("x", ""), "the numerator is not a polynomial in x")
            form, terms, scale = _denominator(q)
        except MatchFailure as failure:
            reasons.append(failure.reason)
            continue
        check(terms, "the denominator does not depend on x")
        check(np.all(scale > 0), "the denominator's constant term is not positive")
        return Rational(leaf, form, p.terms, terms, scale, [*root_nodes, *walk.nodes.values()])
    specific = [r for r in reasons if "second non-constant value" not in r]
    fail((specific or reasons or ["no non-constant input"])[0])
