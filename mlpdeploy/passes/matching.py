"""onnx_ir matching helpers shared by rewrite passes: constants, linears, activations, scopes.

A matcher either returns what it recognized or raises `MatchFailure(reason)`; the reason is
what a pass records in `PassReport.skipped`, so "why did my pass not fire?" has an answer.
Recognizers that merely probe (`match_activation`) return None instead of raising.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..scopes import SCOPES_KEY, name_scopes

CLASSES_KEY = "pkg.torch.onnx.class_hierarchy"
NAMESPACE_KEY = "namespace"
STANDARD_DOMAINS = ("", "ai.onnx")
LINEAR_OPS = ("MatMul", "Gemm")


class MatchFailure(Exception):
    """A candidate site failed a check; `reason` says which, in one line."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def fail(reason: str):
    raise MatchFailure(reason)


def check(condition: bool, reason: str) -> None:
    if not condition:
        raise MatchFailure(reason)


# ---------------------------------------------------------------- nodes, values, constants


def describe(value: ir.Value | None) -> str:
    """A short name for a value in a skip reason."""
    if value is None:
        return "<missing>"
    return repr(value.name) if value.name else "<unnamed value>"


def producer(value: ir.Value | None, *op_types: str) -> ir.Node | None:
    """The standard-domain node producing `value` if its op_type is one of `op_types` (any if none)."""
    node = value.producer() if value is not None else None
    if node is None or node.domain not in STANDARD_DOMAINS:
        return None
    return node if not op_types or node.op_type in op_types else None


def op_label(value: ir.Value) -> str:
    node = value.producer()
    if node is None:
        return "a graph input" if value.is_graph_input() else "no node"
    return f"{node.domain + '::' if node.domain else ''}{node.op_type}"


FOLDABLE = ("Cast", "Reshape", "Identity", "Squeeze", "Unsqueeze")  # how exporters spell a constant index


def constant(value: ir.Value | None, depth: int = 8) -> np.ndarray | None:
    """The value as a numpy array if it is constant: an initializer that is not a graph input
    (a graph input can be overridden at run time), a Constant node's output, or Cast/Reshape/
    Identity/(Un)Squeeze of constants (torch's optimize=False export spells Slice bounds so)."""
    if value is None or value.is_graph_input() or depth == 0:
        return None
    if value.is_initializer():
        return value.const_value.numpy() if value.const_value is not None else None
    node = producer(value)
    if node is None:
        return None
    if node.op_type == "Constant":
        tensor = ir.convenience.get_const_tensor(value)
        return tensor.numpy() if tensor is not None else None
    if node.op_type not in FOLDABLE or not node.inputs:
        return None
    args = [constant(v, depth - 1) if v is not None else None for v in node.inputs]
    if args[0] is None or any(a is None for v, a in zip(node.inputs, args) if v is not None):
        return None
    data = args[0]
    if node.op_type == "Cast":
        return data.astype(ir.DataType(int_attr(node, "to", 1)).numpy())
    if node.op_type == "Identity":
        return data
    if node.op_type == "Reshape" and len(args) > 1:
        shape = [int(s) for s in args[1].reshape(-1)]
        if int_attr(node, "allowzero", 0) == 0:
            shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return data.reshape(shape)
    axes_attr = node.attributes.get("axes")
    axes = args[1] if len(args) > 1 else (np.array(axes_attr.as_ints()) if axes_attr is not None else None)
    if node.op_type == "Squeeze":
        return np.squeeze(data, axis=None if axes is None else tuple(int(a) for a in axes.reshape(-1)))
    if node.op_type == "Unsqueeze" and axes is not None:
        return np.expand_dims(data, tuple(int(a) for a in axes.reshape(-1)))
    return None


def is_constant(value: ir.Value | None) -> bool:
    """Whether `constant(value)` would find a value (without materializing initializers)."""
    if value is None or value.is_graph_input():
        return False
    if value.is_initializer():
        return value.const_value is not None
    node = producer(value)
    if node is None or node.op_type not in ("Constant", *FOLDABLE):
        return False
    return node.op_type == "Constant" or constant(value) is not None


def scalar(value: ir.Value | None) -> float | None:
    """The value of a one-element constant, else None."""
    shape = value.shape if value is not None else None
    if shape is not None and all(isinstance(d, int) for d in shape) and math.prod(shape) != 1:
        return None  # never materialize a weight to learn it is not a scalar
    array = constant(value)
    return float(array.reshape(-1)[0]) if array is not None and array.size == 1 else None


def require_constant(value: ir.Value | None, role: str, node: ir.Node) -> None:
    """Fail unless `value` (the `role` input of `node`) is a constant initializer or Constant."""
    if value is not None and value.is_graph_input():
        fail(f"{role} {describe(value)} of {node.op_type} {node.name!r} is a graph input, not a constant initializer")
    check(is_constant(value), f"{role} {describe(value)} of {node.op_type} {node.name!r} is not a constant initializer")


def int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def float_attr(node: ir.Node, name: str, default: float) -> float:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_float()


def close(a: float, b: float, rel: float = 2e-3) -> bool:
    """Constants compare within fp16 rounding (0.044715 is 0.04471 in fp16)."""
    return abs(a - b) <= rel * max(abs(a), abs(b))


def rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


# ---------------------------------------------------------------- linears: y = x·W (+ b)


@dataclass
class Linear:
    """`output = input · W + Σ scale·bias`, W a constant read as [in, out] after `transposed`/`alpha`."""

    input: ir.Value
    output: ir.Value
    weight: ir.Value
    transposed: bool = False  # the constant is [out, in]
    alpha: float = 1.0
    biases: list[tuple[ir.Value, float]] = field(default_factory=list)
    nodes: list[ir.Node] = field(default_factory=list)  # MatMul/Gemm (+ Add): replaced with the site

    @property
    def in_features(self) -> int:
        return self._weight_shape()[1 if self.transposed else 0]

    @property
    def out_features(self) -> int:
        return self._weight_shape()[0 if self.transposed else 1]

    @property
    def dtype(self) -> ir.DataType:
        if self.weight.is_initializer():
            return self.weight.const_value.dtype
        return ir.DataType.from_numpy(constant(self.weight).dtype)

    def _weight_shape(self) -> tuple[int, int]:
        return tuple(constant(self.weight).shape) if self.weight.shape is None else tuple(self.weight.shape)

    def weight_array(self) -> np.ndarray:
        """The weight as [in, out] (transposed, alpha folded)."""
        array = constant(self.weight)
        array = array.T if self.transposed else array
        if self.alpha != 1.0:
            array = (array * self.alpha).astype(array.dtype)
        return np.ascontiguousarray(array)

    def bias_array(self) -> np.ndarray | None:
        """The total bias as [out], or None."""
        if not self.biases:
            return None
        total = None
        for value, scale in self.biases:
            array = constant(value)
            term = np.broadcast_to(array.reshape(-1), (self.out_features,)).astype(array.dtype)
            term = term * scale if scale != 1.0 else term
            total = term if total is None else total + term
        return total.astype(constant(self.biases[0][0]).dtype)

    def reusable_weight(self) -> ir.Value | None:
        """The weight initializer itself when it already is [in, out] with nothing folded."""
        ok = not self.transposed and self.alpha == 1.0 and self.weight.is_initializer()
        return self.weight if ok else None

    def reusable_bias(self) -> ir.Value | None:
        """The bias initializer itself when it already is one [out] vector."""
        if len(self.biases) != 1:
            return None
        value, scale = self.biases[0]
        ok = scale == 1.0 and value.is_initializer() and value.shape is not None and list(value.shape) == [self.out_features]
        return value if ok else None


def looks_linear(value: ir.Value | None) -> bool:
    """Cheap probe: `value` comes from MatMul/Gemm, possibly through an Add of a constant."""
    node = producer(value)
    if node is not None and node.op_type == "Add" and len(node.inputs) == 2:
        a, b = node.inputs
        return (is_constant(b) and producer(a, *LINEAR_OPS) is not None) or (is_constant(a) and producer(b, *LINEAR_OPS) is not None)
    return node is not None and node.op_type in LINEAR_OPS


def match_linear(value: ir.Value) -> Linear:
    """Recognize `value = x·W (+ b)`: MatMul with W or Transpose(W), or Gemm (transB 0/1), an
    optional Add of a constant bias [out]. W and b must be constants."""
    node = producer(value)
    check(node is not None, f"{describe(value)} comes from {op_label(value)}, not a linear (MatMul/Gemm)")
    biases: list[tuple[ir.Value, float]] = []
    nodes: list[ir.Node] = []
    if node.op_type == "Add" and len(node.inputs) == 2:
        a, b = node.inputs
        pairs = [(lin, c) for lin, c in ((a, b), (b, a)) if is_constant(c) and producer(lin, *LINEAR_OPS) is not None]
        check(bool(pairs), f"{describe(value)} comes from an Add that is not a linear's bias add")
        inner, bias = pairs[0]
        biases.append((bias, 1.0))
        nodes.append(node)
        node = inner.producer()
    check(node.op_type in LINEAR_OPS, f"{describe(value)} comes from {node.op_type}, not a linear (MatMul/Gemm)")
    nodes.insert(0, node)
    x, weight = node.inputs[0], node.inputs[1]
    check(x is not None and weight is not None, f"{node.op_type} {node.name!r} is missing an input")
    alpha, transposed = 1.0, False
    if node.op_type == "Gemm":
        check(int_attr(node, "transA", 0) == 0, f"Gemm {node.name!r} has transA=1 (its data input is transposed)")
        alpha, transposed = float_attr(node, "alpha", 1.0), bool(int_attr(node, "transB", 0))
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            require_constant(node.inputs[2], "bias", node)
            biases.insert(0, (node.inputs[2], float_attr(node, "beta", 1.0)))
    transpose = producer(weight, "Transpose")
    if transpose is not None and is_constant(transpose.inputs[0]):
        perm = transpose.attributes.get("perm")
        check(perm is None or list(perm.as_ints()) == [1, 0], f"weight Transpose {transpose.name!r} has perm {perm}")
        weight, transposed = transpose.inputs[0], not transposed
    require_constant(weight, "weight", node)
    shape = constant(weight).shape
    check(len(shape) == 2, f"weight {describe(weight)} of {node.op_type} {node.name!r} has rank {len(shape)}, not 2")
    linear = Linear(x, value, weight, transposed, alpha, biases, nodes)
    for bias, _ in biases:
        b = constant(bias)
        lead_ones = all(s == 1 for s in b.shape[:-1])
        ok = b.size == 1 or (lead_ones and b.shape[-1] == linear.out_features)
        check(ok, f"bias {describe(bias)} has shape {list(b.shape)}, not [{linear.out_features}]")
        x_rank = rank(x)
        check(b.ndim <= 1 or (x_rank is not None and x_rank >= b.ndim), f"bias {describe(bias)} of rank {b.ndim} may broadcast the output")
    return linear


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
    if node.domain == "com.microsoft":
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


# ---------------------------------------------------------------- site checks and scopes


def check_enclosed(nodes: list[ir.Node], output: ir.Value) -> None:
    """Fail if a value computed inside `nodes` (other than `output`) is read outside them or is a
    graph output: replacing the nodes would leave that reader without its input."""
    inside = set(map(id, nodes))
    for node in nodes:
        for value in node.outputs:
            if value is output:
                continue
            check(not value.is_graph_output(), f"intermediate {describe(value)} ({node.op_type}) is a graph output")
            for use in value.uses():
                reader = use.node
                check(
                    id(reader) in inside,
                    f"intermediate {describe(value)} ({node.op_type}) is also read by {reader.op_type} {reader.name!r}",
                )


def common_scope(nodes: list[ir.Node]) -> list[str]:
    """The deepest module scope shared by `nodes` (each node's name_scopes minus its op entry)."""
    prefix: list[str] | None = None
    for node in nodes:
        scopes = name_scopes(node)[:-1]
        if not scopes:
            continue
        if prefix is None:
            prefix = scopes
        else:
            n = 0
            while n < min(len(prefix), len(scopes)) and prefix[n] == scopes[n]:
                n += 1
            prefix = prefix[:n]
    return prefix or []


def scoped_metadata(template: ir.Node, scope: list[str], op_entry: str, op_class: str) -> dict[str, str]:
    """`template`'s metadata_props with the scope keys cut to `scope` and ended by a new op entry,
    so `scopes.module_path` of the new node is `scope[-1]`."""
    props = dict(template.metadata_props)
    depth = len(scope)
    props[SCOPES_KEY] = repr([*scope, op_entry])
    try:
        classes = ast.literal_eval(props.get(CLASSES_KEY, "[]"))
    except (ValueError, SyntaxError):
        classes = []
    if isinstance(classes, list) and len(classes) >= depth:
        props[CLASSES_KEY] = repr([*classes[:depth], op_class])
    namespace = props.get(NAMESPACE_KEY)
    if namespace is not None:
        segments = namespace.split("/")
        if len(segments) >= depth:
            props[NAMESPACE_KEY] = "/".join([*segments[:depth], f"{op_entry}: {op_class}"])
    props.pop("pkg.torch.onnx.fx_node", None)  # named an aten op that no longer exists
    return props


# ---------------------------------------------------------------- graph edits


def value_names(graph: ir.Graph) -> set[str]:
    names = {v.name for v in graph.inputs if v.name} | set(graph.initializers)
    names |= {v.name for node in graph for v in node.outputs if v.name}
    return names


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... — the first not in `taken` (which it is added to)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def remove_dead(graph: ir.Graph, values: list[ir.Value]) -> list[str]:
    """Remove what `values` leave dead: initializers nobody reads, nodes (a weight Transpose, a
    Constant) whose outputs nobody reads, transitively. Returns the names of the values that went."""
    removed, work = [], list(values)
    while work:
        value = work.pop()
        if value is None or value.uses() or value.is_graph_output() or value.is_graph_input():
            continue
        if value.is_initializer():
            if graph.initializers.get(value.name) is value:
                del graph.initializers[value.name]
                removed.append(value.name)
            continue
        node = value.producer()
        if node is None or node.graph is not graph:
            continue
        if any(o.uses() or o.is_graph_output() for o in node.outputs):
            continue
        inputs = list(node.inputs)
        graph.remove(node, safe=True)
        removed.extend(o.name for o in node.outputs if o.name)
        work.extend(inputs)
    return removed
