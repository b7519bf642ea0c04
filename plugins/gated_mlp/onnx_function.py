"""GatedMLP as an ONNX model-local function: a node builder and the standard-op body.

Scheme: one FunctionProto per variant, all named `mlpdeploy::GatedMLP`, told apart by the
IR v10 function `overload` field, because a function body cannot branch on whether an
optional input is present. Overload names read `<activation>[_bgu[_bd]]`, e.g. `silu`,
`gelu_tanh_bgu_bd` (verified: ONNX Runtime 1.32 resolves calls by overload). Call nodes never
have an empty input slot: TensorRT's parser rejects a local-function call with an empty
input ("Invalid Node"), and a plugin cannot tell which bias a shortened input list holds. So
the inputs are x, W_gate_up, W_down, then b_gate_up, then b_down; a node given b_down
without b_gate_up gets a zero b_gate_up constant (registered as an initializer by
`ensure_function`). The node's attributes `activation`, `plugin_namespace`,
`plugin_version` are declared on the function (the body ignores them).

Body (the model's default-domain opset, ≥ 15 for CastLike):
    GU = MatMul(X, W_gate_up) [+ B_gate_up];  Gate, Up = Split(GU, axis=-1, 2 halves)
    H  = act(Gate) * Up;                       Y = MatMul(H, W_down) [+ B_down]
silu = Gate·Sigmoid(Gate); gelu = ½g(1+Erf(g/√2)); gelu_tanh = ½g(1+Tanh(√(2/π)(g+0.044715g³)));
relu = Relu; none = identity. Only elementary ops, which both ONNX Runtime and the TensorRT
parser import at every opset, and which work in fp32, fp16 and bf16 (constants CastLike'd).

TensorRT's ONNX parser keys local functions by name alone (it ignores `overload`), so
`plugins.forms.function_body_form` renames overloaded functions to unique names before a
TensorRT-RTX build; with a registered plugin, the node's name picks the plugin and the body
is never read.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import DEFAULT_OPSET, DOMAIN, IR_VERSION, PLUGIN_NAMESPACE, PLUGIN_VERSION
from mlpdeploy.errors import OpError

from .reference import ACTIVATIONS

OP_TYPE = "GatedMLP"
OPSET_VERSION = 1
MIN_ONNX_OPSET = 15
DEFAULT_ONNX_OPSET = DEFAULT_OPSET
DECLARED_ATTRIBUTES = ("activation", "plugin_namespace", "plugin_version")
INPUT_NAMES = ("x", "w_gate_up", "w_down", "b_gate_up", "b_down")

__all__ = [
    "ACTIVATIONS",
    "OP_TYPE",
    "ensure_function",
    "gated_mlp_node",
    "make_model",
    "overload_name",
]


def overload_name(activation: str, has_b_gate_up: bool, has_b_down: bool) -> str:
    """The function overload a variant resolves to: `<activation>[_bgu[_bd]]`."""
    if activation not in ACTIVATIONS:
        raise OpError(f"unknown GatedMLP activation {activation!r}; available are {', '.join(ACTIVATIONS)}")
    if has_b_down and not has_b_gate_up:
        raise OpError("a GatedMLP with b_down has b_gate_up too (gated_mlp_node supplies a zero one)")
    return activation + ("_bgu" if has_b_gate_up else "") + ("_bd" if has_b_down else "")


def gated_mlp_node(
    x: ir.Value,
    w_gate_up: ir.Value,
    w_down: ir.Value,
    *,
    activation: str,
    b_gate_up: ir.Value | None = None,
    b_down: ir.Value | None = None,
    name: str | None = None,
) -> ir.Node:
    """A `mlpdeploy::GatedMLP` node (not inserted in any graph) with one output.

    The output's dtype is x's, and its shape is x's with the last dim replaced by W_down's
    last dim, as far as those are known. Given b_down without b_gate_up, a zero b_gate_up
    constant named `<name or w_gate_up's name>_b_gate_up_zero` fills the slot (W_gate_up's
    shape and dtype must be known); `ensure_function` registers it as an initializer.
    """
    if b_down is not None and b_gate_up is None:
        b_gate_up = _zero_bias(w_gate_up, name)
    inputs = [v for v in (x, w_gate_up, w_down, b_gate_up, b_down) if v is not None]
    node = ir.Node(
        DOMAIN,
        OP_TYPE,
        inputs,
        attributes=[
            ir.AttrString("activation", activation),
            ir.AttrString("plugin_namespace", PLUGIN_NAMESPACE),
            ir.AttrString("plugin_version", PLUGIN_VERSION),
        ],
        overload=overload_name(activation, b_gate_up is not None, b_down is not None),
        num_outputs=1,
        name=name,
    )
    out = node.outputs[0]
    out.dtype = x.dtype
    if x.shape is not None and w_down.shape is not None and len(w_down.shape) == 2:
        out.shape = ir.Shape([*x.shape[:-1], w_down.shape[1]])
    if name:
        out.name = f"{name}_output"
    return node


def _zero_bias(w_gate_up: ir.Value, name: str | None) -> ir.Value:
    shape, dtype = w_gate_up.shape, w_gate_up.dtype
    if shape is None or len(shape) != 2 or not isinstance(shape[1], int) or dtype is None:
        raise OpError(
            f"GatedMLP with b_down but no b_gate_up needs W_gate_up's static shape and dtype for a zero "
            f"b_gate_up; {w_gate_up.name!r} has shape {shape} and dtype {dtype}"
        )
    value_name = f"{name or w_gate_up.name}_b_gate_up_zero"
    zeros = np.zeros((shape[1],), dtype=dtype.numpy())
    return ir.Value(
        name=value_name, shape=ir.Shape([shape[1]]), type=ir.TensorType(dtype), const_value=ir.tensor(zeros, name=value_name)
    )


def ensure_function(model: ir.Model, node: ir.Node) -> None:
    """Add the model-local function `node` resolves to (once) and the `mlpdeploy` opset import.

    Constant inputs of the node that no graph holds yet (the zero b_gate_up of
    gated_mlp_node) are registered as initializers of the main graph.
    """
    if node.domain != DOMAIN or node.op_type != OP_TYPE:
        raise OpError(f"ensure_function expects a {DOMAIN}::{OP_TYPE} node, got {node.domain}::{node.op_type}")
    activation = node.attributes.get_string("activation", "silu")
    if any(v is None for v in node.inputs) or not 3 <= len(node.inputs) <= 5:
        raise OpError(
            f"GatedMLP node {node.name!r} must have 3 to 5 inputs and no empty slot "
            "(x, w_gate_up, w_down[, b_gate_up[, b_down]]); build it with gated_mlp_node"
        )
    has_bgu, has_bd = len(node.inputs) > 3, len(node.inputs) > 4
    overload = overload_name(activation, has_bgu, has_bd)
    if node.overload != overload:
        raise OpError(
            f"GatedMLP node {node.name!r} has overload {node.overload!r}, but its activation and biases "
            f"make it {overload!r}; build it with gated_mlp_node"
        )
    existing = model.opset_imports.get(DOMAIN)
    if existing is not None and existing != OPSET_VERSION:
        raise OpError(f"model imports domain {DOMAIN!r} at version {existing}, GatedMLP needs {OPSET_VERSION}")
    model.opset_imports[DOMAIN] = OPSET_VERSION
    for value in node.inputs:
        if value.const_value is not None and value.graph is None and value.producer() is None:
            model.graph.register_initializer(value)
    if (DOMAIN, OP_TYPE, overload) in model.functions:
        return
    onnx_opset = model.opset_imports.get("", DEFAULT_ONNX_OPSET)
    model.opset_imports.setdefault("", onnx_opset)
    function = build_function(activation, has_bgu, has_bd, onnx_opset)
    model.functions[function.identifier()] = function


def build_function(activation: str, has_b_gate_up: bool, has_b_down: bool, onnx_opset: int) -> ir.Function:
    """The FunctionProto (as an ir.Function) of one GatedMLP variant at a default-domain opset."""
    if onnx_opset < MIN_ONNX_OPSET:
        raise OpError(f"GatedMLP's function body needs ONNX opset >= {MIN_ONNX_OPSET}, the model has {onnx_opset}")
    overload = overload_name(activation, has_b_gate_up, has_b_down)
    n_inputs = 5 if has_b_down else 4 if has_b_gate_up else 3
    formals = [ir.Value(name=n) for n in INPUT_NAMES[:n_inputs]]
    x, w_gate_up, w_down = formals[:3]
    nodes: list[ir.Node] = []

    def op(op_type: str, *args: ir.Value, outputs: int = 1, **attrs):
        node = ir.Node("", op_type, args, attributes=[_attr(k, v) for k, v in attrs.items()], num_outputs=outputs)
        nodes.append(node)
        return node.outputs if outputs > 1 else node.outputs[0]

    def const(value: float, like: ir.Value) -> ir.Value:
        return op("CastLike", op("Constant", value_float=value), like)

    gate_up = op("MatMul", x, w_gate_up)
    if has_b_gate_up:
        gate_up = op("Add", gate_up, formals[3])
    split_attrs = {"axis": -1, "num_outputs": 2} if onnx_opset >= 18 else {"axis": -1}
    gate, up = op("Split", gate_up, outputs=2, **split_attrs)
    act = activation_nodes(op, const, gate, activation)
    hidden = op("Mul", act, up)
    y = op("MatMul", hidden, w_down)
    if has_b_down:
        y = op("Add", y, formals[4])
    y.name = "y"
    for i, node in enumerate(nodes):
        node.name = f"n{i}_{node.op_type}"
        for j, out in enumerate(node.outputs):
            if out.name is None:
                out.name = f"t{i}_{j}"
    graph = ir.Graph(formals, [y], nodes=nodes, opset_imports={"": onnx_opset}, name=f"{OP_TYPE}_{overload}")
    attributes = [ir.Attr(name, ir.AttributeType.UNDEFINED, None) for name in DECLARED_ATTRIBUTES]
    return ir.Function(DOMAIN, OP_TYPE, overload, graph=graph, attributes=attributes)


def activation_nodes(op, const, gate: ir.Value, activation: str) -> ir.Value:
    """`activation` (one of ACTIVATIONS) of `gate` in standard ops; `op(op_type, *inputs)` appends a
    node, `const(value, like)` makes a scalar of `like`'s type. Shared with other ops' bodies."""
    if activation == "silu":
        return op("Mul", gate, op("Sigmoid", gate))
    if activation == "gelu":
        inner = op("Erf", op("Mul", gate, const(1.0 / math.sqrt(2.0), gate)))
        return op("Mul", op("Mul", gate, const(0.5, gate)), op("Add", inner, const(1.0, gate)))
    if activation == "gelu_tanh":
        cube = op("Mul", op("Mul", gate, gate), gate)
        poly = op("Add", gate, op("Mul", cube, const(0.044715, gate)))
        inner = op("Tanh", op("Mul", poly, const(math.sqrt(2.0 / math.pi), gate)))
        return op("Mul", op("Mul", gate, const(0.5, gate)), op("Add", inner, const(1.0, gate)))
    if activation == "relu":
        return op("Relu", gate)
    return gate  # none: bilinear / identity


def _attr(name: str, value) -> ir.Attr:
    if isinstance(value, float):
        return ir.AttrFloat32(name, value)
    if isinstance(value, int):
        return ir.AttrInt64(name, value)
    raise TypeError(f"unsupported attribute {name}={value!r}")


def make_model(
    d: int,
    h: int,
    d_out: int | None = None,
    *,
    activation: str = "silu",
    bias: bool | tuple[bool, bool] = False,
    dtype: str = "float32",
    rank: int = 2,
    seed: int = 0,
    onnx_opset: int = DEFAULT_ONNX_OPSET,
) -> ir.Model:
    """A standalone model of one GatedMLP node, for tests and benchmarks.

    Input `x` has `rank` dims, all symbolic but the last (= d); output `y`. Weights are
    seeded random initializers named `w_gate_up`, `w_down` (and `b_gate_up`, `b_down` when
    `bias` asks for them: one bool for both, or a pair), scaled so activations stay O(1).
    """
    d_out = d if d_out is None else d_out
    has_bgu, has_bd = (bias, bias) if isinstance(bias, bool) else bias
    np_dtype = np.dtype(dtype)
    ir_dtype = ir.DataType.from_numpy(np_dtype)
    rng = np.random.default_rng(seed)

    def init(name: str, shape: tuple[int, ...], scale: float) -> ir.Value:
        array = (rng.standard_normal(shape) * scale).astype(np_dtype)
        value = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(ir_dtype), const_value=ir.tensor(array, name=name))
        return value

    dims = [f"dim{i}" for i in range(rank - 1)]
    x = ir.Value(name="x", shape=ir.Shape([*dims, d]), type=ir.TensorType(ir_dtype))
    weights = [init("w_gate_up", (d, 2 * h), d**-0.5), init("w_down", (h, d_out), h**-0.5)]
    b_gate_up = init("b_gate_up", (2 * h,), 0.5) if has_bgu else None
    b_down = init("b_down", (d_out,), 0.5) if has_bd else None
    node = gated_mlp_node(x, *weights, activation=activation, b_gate_up=b_gate_up, b_down=b_down, name="gated_mlp")
    node.outputs[0].name = "y"
    initializers = [v for v in (*weights, b_gate_up, b_down) if v is not None]  # a zero b_gate_up: ensure_function
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=initializers, opset_imports={"": onnx_opset}, name="gated_mlp")
    model = ir.Model(graph, ir_version=IR_VERSION, producer_name="mlpdeploy")
    ensure_function(model, node)
    return model
