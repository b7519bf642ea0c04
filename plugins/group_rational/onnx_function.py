"""GroupRational as an ONNX model-local function: a node builder and the standard-op body.

One FunctionProto per variant, all named `mlpdeploy::GroupRational`, told apart by the IR v10
`overload` `<form>_<m>_<n>` (e.g. `A_5_4`): the degrees fix how many Horner steps the body
has, and the form fixes its denominator. The call node has inputs x, numerator [1|G, m+1],
denominator [G, n] and attributes `form`, `plugin_namespace`, `plugin_version` (declared on
the function; the body reads none of them).

Body (default-domain opset ≥ 15, for CastLike; everything in fp32, the result CastLike'd back):
    Xg = Reshape(Cast(X, float), concat(Shape(X)[:-1], [G, -1]))      G = Shape(denominator)[0]
    a_i = Slice(numerator, i, axis=1) [1|G, 1];  b_i likewise           (broadcast over a group)
    P = Horner(a, Xg);  form A: Q = 1 + Horner(|b|, |Xg|)·|Xg|;  form B: Q = 1 + |Horner(b, Xg)·Xg|
    Y = CastLike(Reshape(P / Q, Shape(X)), X)
Only elementary ops (Shape, Slice, Concat, Reshape, Cast, Mul, Add, Abs, Div), which ONNX
Runtime and the TensorRT parser import at every opset.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import DEFAULT_OPSET, DOMAIN
from mlpdeploy.errors import OpError

from ..onnx_body import Body, add_function, require_op, set_plugin_attributes, standalone_model, static_shape
from .reference import FORMS, check_shapes

OP_TYPE = "GroupRational"
OPSET_VERSION = 1
MIN_ONNX_OPSET = 15
DEFAULT_ONNX_OPSET = DEFAULT_OPSET
DECLARED_ATTRIBUTES = ("form", "plugin_namespace", "plugin_version")
INPUT_NAMES = ("x", "numerator", "denominator")

__all__ = ["FORMS", "OP_TYPE", "complete_node", "ensure_function", "group_rational_node", "make_model", "overload_name"]


def overload_name(form: str, m: int, n: int) -> str:
    """The function overload a variant resolves to: `<form>_<m>_<n>`."""
    if form not in FORMS:
        raise OpError(f"unknown GroupRational form {form!r}; forms are {', '.join(FORMS)}")
    return f"{form}_{m}_{n}"


def variant(node: ir.Node) -> tuple[str, int, int, int]:
    """(form, groups, m, n) of a GroupRational node, from its attribute and coefficient shapes."""
    if len(node.inputs) != 3 or any(v is None for v in node.inputs):
        raise OpError(f"GroupRational node {node.name!r} must have 3 inputs (x, numerator, denominator)")
    form = node.attributes.get_string("form", "A")
    x = node.inputs[0]
    x_shape = tuple(x.shape) if x.shape is not None else (None,)
    numerator = static_shape(node.inputs[1], "GroupRational numerator")
    denominator = static_shape(node.inputs[2], "GroupRational denominator")
    groups, m, n = check_shapes(x_shape, numerator, denominator, form)
    return form, groups, m, n


def complete_node(node: ir.Node) -> None:
    """Give a GroupRational node (e.g. one torch's exporter wrote) its overload and plugin attributes."""
    form, _, m, n = variant(node)
    node.attributes["form"] = ir.AttrString("form", form)
    set_plugin_attributes(node)
    node.overload = overload_name(form, m, n)


def group_rational_node(x: ir.Value, numerator: ir.Value, denominator: ir.Value, *, form: str = "A", name: str | None = None) -> ir.Node:
    """A `mlpdeploy::GroupRational` node (not inserted in any graph) whose output has x's dtype and shape."""
    node = ir.Node(DOMAIN, OP_TYPE, [x, numerator, denominator], attributes=[ir.AttrString("form", form)], name=name)
    complete_node(node)
    out = node.outputs[0]
    out.dtype, out.shape = x.dtype, x.shape
    if name:
        out.name = f"{name}_output"
    return node


def ensure_function(model: ir.Model, node: ir.Node) -> None:
    """Add the model-local function `node` resolves to (once) and the `mlpdeploy` opset import."""
    require_op(node, OP_TYPE)
    form, _, m, n = variant(node)
    add_function(model, node, OP_TYPE, OPSET_VERSION, overload_name(form, m, n), lambda opset: build_function(form, m, n, opset))


def build_function(form: str, m: int, n: int, onnx_opset: int) -> ir.Function:
    """The FunctionProto (as an ir.Function) of one GroupRational variant at a default-domain opset."""
    if onnx_opset < MIN_ONNX_OPSET:
        raise OpError(f"GroupRational's function body needs ONNX opset >= {MIN_ONNX_OPSET}, the model has {onnx_opset}")
    body = Body(INPUT_NAMES)
    x, numerator, denominator = body.inputs
    x_shape = body.op("Shape", x)
    lead = body.slice(x_shape, 0, -1, 0)
    groups = body.slice(body.op("Shape", denominator), 0, 1, 0)
    xg = body.op("Reshape", body.to_float(x), body.op("Concat", lead, groups, body.ints([-1]), axis=0))
    num, den = body.to_float(numerator), body.to_float(denominator)
    a = [body.slice(num, i, i + 1, 1) for i in range(m + 1)]  # [1|G, 1]: the first Mul broadcasts them
    b = [body.slice(den, i, i + 1, 1) for i in range(n)]

    def horner(coefficients: list[ir.Value], t: ir.Value) -> ir.Value:
        acc = coefficients[-1]
        for c in reversed(coefficients[:-1]):
            acc = body.op("Add", body.op("Mul", acc, t), c)
        return acc

    one = body.float(1.0)
    p = horner(a, xg)
    if form == "A":
        ax = body.op("Abs", xg)
        q = body.op("Add", one, body.op("Mul", horner([body.op("Abs", v) for v in b], ax), ax))
    else:
        q = body.op("Add", one, body.op("Abs", body.op("Mul", horner(b, xg), xg)))
    y = body.op("CastLike", body.op("Reshape", body.op("Div", p, q), x_shape), x)
    return body.function(y, OP_TYPE, overload_name(form, m, n), onnx_opset, DECLARED_ATTRIBUTES)


def make_model(
    channels: int,
    groups: int,
    *,
    form: str = "A",
    degrees: tuple[int, int] = (5, 4),
    shared_numerator: bool = False,
    dtype: str = "float32",
    rank: int = 3,
    seed: int = 0,
    onnx_opset: int = DEFAULT_ONNX_OPSET,
) -> ir.Model:
    """A standalone model of one GroupRational node, for tests and benchmarks.

    Input `x` has `rank` dims, all symbolic but the last (= channels); output `y`. The seeded
    random coefficients (initializers `numerator`, `denominator`) shrink with the power.
    """
    if channels % groups:
        raise OpError(f"GroupRational make_model: {channels} channels are not divisible into {groups} groups")
    numerator, denominator = random_coefficients(groups, *degrees, shared_numerator, seed)
    model, node = standalone_model(group_rational_node, {"numerator": numerator, "denominator": denominator}, channels, dtype=dtype,
                                   rank=rank, onnx_opset=onnx_opset, name="group_rational", form=form)
    ensure_function(model, node)
    return model


def random_coefficients(groups: int, m: int, n: int, shared_numerator: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded coefficients whose terms shrink with the power (a_i, b_i ~ N(0, 1)·0.6^i), float32."""
    rng = np.random.default_rng(seed)
    numerator = rng.standard_normal((1 if shared_numerator else groups, m + 1)) * 0.6 ** np.arange(m + 1)
    denominator = rng.standard_normal((groups, n)) * 0.6 ** np.arange(1, n + 1)
    return numerator.astype(np.float32), denominator.astype(np.float32)
