"""BSplineKAN as an ONNX model-local function: a node builder and the standard-op body.

One FunctionProto per spline order K, all named `mlpdeploy::BSplineKAN`, told apart by the IR
v10 `overload` `order<K>` (the recursion depth is fixed by K; grid size and widths are read
from the inputs at run time). Inputs x [..., I], grid [I, G+2K+1], W_base [I, O],
W_spline [I·(G+K), O]; attributes `plugin_namespace`, `plugin_version` (declared, unread).

Body (default-domain opset ≥ 15; fp32 math, the result CastLike'd to x):
    X2 = Reshape(Cast(X), [-1, I]);  Xu = Unsqueeze(X2, -1)               [R, I, 1]
    B  = Cast(And(Xu >= grid[:, :-1], Xu < grid[:, 1:]))                  [R, I, G+2K]
    for k in 1..K:  B = (Xu − t[:, :-(k+1)])/(t[:, k:-1] − t[:, :-(k+1)])·B[..., :-1]
                      + (t[:, k+1:] − Xu)/(t[:, k+1:] − t[:, 1:-k])·B[..., 1:]
    Y  = MatMul(X2·Sigmoid(X2), W_base) + MatMul(Reshape(B, [R, -1]), W_spline)
    Y  = CastLike(Reshape(Y, concat(Shape(X)[:-1], Shape(W_base)[1:])), X)
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import DEFAULT_OPSET, DOMAIN
from mlpdeploy.errors import OpError

from ..onnx_body import Body, add_function, require_op, set_plugin_attributes, standalone_model, static_shape
from .reference import check_shapes, uniform_grid

OP_TYPE = "BSplineKAN"
OPSET_VERSION = 1
MIN_ONNX_OPSET = 15
DEFAULT_ONNX_OPSET = DEFAULT_OPSET
DECLARED_ATTRIBUTES = ("plugin_namespace", "plugin_version")
INPUT_NAMES = ("x", "grid", "base_weight", "spline_weight")

__all__ = ["OP_TYPE", "bspline_kan_node", "complete_node", "ensure_function", "make_model"]


def variant(node: ir.Node) -> tuple[int, int, int, int]:
    """(I, O, bases per feature, K) of a BSplineKAN node, from its input shapes."""
    if len(node.inputs) != 4 or any(v is None for v in node.inputs):
        raise OpError(f"BSplineKAN node {node.name!r} must have 4 inputs (x, grid, base_weight, spline_weight)")
    x = node.inputs[0]
    x_shape = tuple(x.shape) if x.shape is not None else (None,)
    shapes = [static_shape(v, f"BSplineKAN {role}") for v, role in zip(node.inputs[1:], INPUT_NAMES[1:])]
    return check_shapes(x_shape, *shapes)


def complete_node(node: ir.Node) -> None:
    """Give a BSplineKAN node (e.g. one torch's exporter wrote) its overload and plugin attributes."""
    order = variant(node)[3]
    set_plugin_attributes(node)
    node.overload = f"order{order}"


def bspline_kan_node(x: ir.Value, grid: ir.Value, base_weight: ir.Value, spline_weight: ir.Value, *, name: str | None = None) -> ir.Node:
    """A `mlpdeploy::BSplineKAN` node (not inserted in any graph); output x's dtype, shape [..., O]."""
    node = ir.Node(DOMAIN, OP_TYPE, [x, grid, base_weight, spline_weight], name=name)
    complete_node(node)
    out = node.outputs[0]
    out.dtype = x.dtype
    if x.shape is not None:
        out.shape = ir.Shape([*x.shape[:-1], static_shape(base_weight, "BSplineKAN base_weight")[1]])
    if name:
        out.name = f"{name}_output"
    return node


def ensure_function(model: ir.Model, node: ir.Node) -> None:
    """Add the model-local function `node` resolves to (once) and the `mlpdeploy` opset import."""
    require_op(node, OP_TYPE)
    order = variant(node)[3]
    add_function(model, node, OP_TYPE, OPSET_VERSION, f"order{order}", lambda opset: build_function(order, opset))


def build_function(order: int, onnx_opset: int) -> ir.Function:
    """The FunctionProto (as an ir.Function) of BSplineKAN with spline order `order`."""
    if onnx_opset < MIN_ONNX_OPSET:
        raise OpError(f"BSplineKAN's function body needs ONNX opset >= {MIN_ONNX_OPSET}, the model has {onnx_opset}")
    body = Body(INPUT_NAMES)
    x, grid, base_weight, spline_weight = body.inputs
    in_features = body.slice(body.op("Shape", base_weight), 0, 1, 0)
    x2 = body.op("Reshape", body.to_float(x), body.op("Concat", body.ints([-1]), in_features, axis=0))
    xu = body.op("Unsqueeze", x2, body.ints([-1]))
    t = body.to_float(grid)
    knots = lambda start, end: body.slice(t, start, end, 1)  # noqa: E731
    ge = body.op("GreaterOrEqual", xu, knots(0, -1))
    lt = body.op("Less", xu, knots(1, None))
    bases = body.op("Cast", body.op("And", ge, lt), to=ir.DataType.FLOAT.value)
    for k in range(1, order + 1):
        left_knots, right_knots = knots(0, -(k + 1)), knots(k + 1, None)
        left = body.op("Div", body.op("Sub", xu, left_knots), body.op("Sub", knots(k, -1), left_knots))
        right = body.op("Div", body.op("Sub", right_knots, xu), body.op("Sub", right_knots, knots(1, -k)))
        bases = body.op(
            "Add",
            body.op("Mul", left, body.slice(bases, 0, -1, 2)),
            body.op("Mul", right, body.slice(bases, 1, None, 2)),
        )
    rows = body.op("Concat", body.slice(body.op("Shape", x2), 0, 1, 0), body.ints([-1]), axis=0)
    silu = body.op("Mul", x2, body.op("Sigmoid", x2))
    y = body.op(
        "Add",
        body.op("MatMul", silu, body.to_float(base_weight)),
        body.op("MatMul", body.op("Reshape", bases, rows), body.to_float(spline_weight)),
    )
    out_shape = body.op("Concat", body.slice(body.op("Shape", x), 0, -1, 0), body.slice(body.op("Shape", base_weight), 1, 2, 0), axis=0)
    y = body.op("CastLike", body.op("Reshape", y, out_shape), x)
    return body.function(y, OP_TYPE, f"order{order}", onnx_opset, DECLARED_ATTRIBUTES)


def random_weights(in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                   grid_range=(-1.0, 1.0), seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded float32 grid, W_base, W_spline of a layer (efficient-kan's shapes, pre-transposed)."""
    rng = np.random.default_rng(seed)
    bases = grid_size + spline_order
    return {
        "grid": uniform_grid(in_features, grid_size, spline_order, grid_range).numpy(),
        "base_weight": (rng.standard_normal((in_features, out_features)) / np.sqrt(in_features)).astype(np.float32),
        "spline_weight": (rng.standard_normal((in_features * bases, out_features)) / np.sqrt(in_features)).astype(np.float32),
    }


def make_model(
    in_features: int,
    out_features: int,
    *,
    grid_size: int = 5,
    spline_order: int = 3,
    grid_range=(-1.0, 1.0),
    dtype: str = "float32",
    rank: int = 3,
    seed: int = 0,
    onnx_opset: int = DEFAULT_ONNX_OPSET,
) -> ir.Model:
    """A standalone model of one BSplineKAN node (input `x`, rank `rank`, last dim I; output `y`), for tests and benchmarks."""
    arrays = random_weights(in_features, out_features, grid_size, spline_order, grid_range, seed)
    model, node = standalone_model(bspline_kan_node, arrays, in_features, dtype=dtype, rank=rank, onnx_opset=onnx_opset, name="bspline_kan")
    ensure_function(model, node)
    return model
