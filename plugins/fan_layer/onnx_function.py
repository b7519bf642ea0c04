"""FANLayer as an ONNX model-local function: a node builder and the standard-op body.

One FunctionProto per activation, all named `mlpdeploy::FANLayer`, told apart by the IR v10
`overload` (the activation's name). Inputs x [..., I], W_p [I, P], W_g [I, D], b_p [P],
b_g [D], always all five (a layer without a p bias gets a zero b_p); attributes
`activation`, `plugin_namespace`, `plugin_version` (declared; the body is fixed by the overload).

Body (default-domain opset ≥ 15; fp32 math, the result CastLike'd to x):
    P = MatMul(Cast(X), W_p) + b_p;  G = MatMul(Cast(X), W_g) + b_g
    Y = CastLike(Concat(Cos(P), Sin(P), act(G), axis=-1), X)
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import DEFAULT_OPSET, DOMAIN
from mlpdeploy.errors import OpError

from ..gated_mlp.onnx_function import activation_nodes
from ..onnx_body import Body, add_function, require_op, set_plugin_attributes, standalone_model, static_shape
from .reference import ACTIVATIONS, check_shapes

OP_TYPE = "FANLayer"
OPSET_VERSION = 1
MIN_ONNX_OPSET = 15
DEFAULT_ONNX_OPSET = DEFAULT_OPSET
DECLARED_ATTRIBUTES = ("activation", "plugin_namespace", "plugin_version")
INPUT_NAMES = ("x", "w_p", "w_g", "b_p", "b_g")

__all__ = ["ACTIVATIONS", "OP_TYPE", "complete_node", "ensure_function", "fan_layer_node", "make_model"]


def variant(node: ir.Node) -> tuple[str, int, int, int]:
    """(activation, I, P, D) of a FANLayer node."""
    if len(node.inputs) != 5 or any(v is None for v in node.inputs):
        raise OpError(f"FANLayer node {node.name!r} must have 5 inputs (x, w_p, w_g, b_p, b_g)")
    activation = node.attributes.get_string("activation", "gelu")
    x = node.inputs[0]
    shapes = [static_shape(v, f"FANLayer {role}") for v, role in zip(node.inputs[1:], INPUT_NAMES[1:])]
    return (activation, *check_shapes(tuple(x.shape) if x.shape is not None else (None,), *shapes, activation))


def complete_node(node: ir.Node) -> None:
    """Give a FANLayer node (e.g. one torch's exporter wrote) its overload and plugin attributes."""
    activation = variant(node)[0]
    node.attributes["activation"] = ir.AttrString("activation", activation)
    set_plugin_attributes(node)
    node.overload = activation


def fan_layer_node(x, w_p, w_g, b_p, b_g, *, activation: str = "gelu", name: str | None = None) -> ir.Node:
    """A `mlpdeploy::FANLayer` node (not inserted in any graph); output x's dtype, shape [..., 2P + D]."""
    node = ir.Node(DOMAIN, OP_TYPE, [x, w_p, w_g, b_p, b_g], attributes=[ir.AttrString("activation", activation)], name=name)
    complete_node(node)
    _, _, p, d = variant(node)
    out = node.outputs[0]
    out.dtype = x.dtype
    if x.shape is not None:
        out.shape = ir.Shape([*x.shape[:-1], 2 * p + d])
    if name:
        out.name = f"{name}_output"
    return node


def ensure_function(model: ir.Model, node: ir.Node) -> None:
    """Add the model-local function `node` resolves to (once) and the `mlpdeploy` opset import."""
    require_op(node, OP_TYPE)
    activation = variant(node)[0]
    add_function(model, node, OP_TYPE, OPSET_VERSION, activation, lambda opset: build_function(activation, opset))


def build_function(activation: str, onnx_opset: int) -> ir.Function:
    """The FunctionProto (as an ir.Function) of FANLayer with `activation`."""
    if onnx_opset < MIN_ONNX_OPSET:
        raise OpError(f"FANLayer's function body needs ONNX opset >= {MIN_ONNX_OPSET}, the model has {onnx_opset}")
    if activation not in ACTIVATIONS:
        raise OpError(f"unknown FANLayer activation {activation!r}; available are {', '.join(ACTIVATIONS)}")
    body = Body(INPUT_NAMES)
    x, w_p, w_g, b_p, b_g = body.inputs
    xf = body.to_float(x)
    p = body.op("Add", body.op("MatMul", xf, body.to_float(w_p)), body.to_float(b_p))
    g = body.op("Add", body.op("MatMul", xf, body.to_float(w_g)), body.to_float(b_g))
    act = activation_nodes(body.op, lambda v, like: body.float(v), g, activation)
    y = body.op("CastLike", body.op("Concat", body.op("Cos", p), body.op("Sin", p), act, axis=-1), x)
    return body.function(y, OP_TYPE, activation, onnx_opset, DECLARED_ATTRIBUTES)


def random_weights(in_features: int, p: int, d: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded float32 W_p, W_g, b_p, b_g."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(in_features)
    return {
        "w_p": (rng.standard_normal((in_features, p)) * scale).astype(np.float32),
        "w_g": (rng.standard_normal((in_features, d)) * scale).astype(np.float32),
        "b_p": (rng.standard_normal(p) * 0.5).astype(np.float32),
        "b_g": (rng.standard_normal(d) * 0.5).astype(np.float32),
    }


def make_model(
    in_features: int,
    out_features: int,
    *,
    p_ratio: float = 0.25,
    activation: str = "gelu",
    dtype: str = "float32",
    rank: int = 3,
    seed: int = 0,
    onnx_opset: int = DEFAULT_ONNX_OPSET,
) -> ir.Model:
    """A standalone model of one FANLayer node with out_features = 2P + D, P = int(out_features·p_ratio)."""
    p = int(out_features * p_ratio)
    d = out_features - 2 * p
    if p < 0 or d < 0:
        raise OpError(f"FANLayer make_model: out_features {out_features} with p_ratio {p_ratio} leaves no room for the g branch")
    model, node = standalone_model(fan_layer_node, random_weights(in_features, p, d, seed), in_features, dtype=dtype, rank=rank,
                                   onnx_opset=onnx_opset, name="fan_layer", activation=activation)
    ensure_function(model, node)
    return model
