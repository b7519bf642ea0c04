"""SparseMLP as an ONNX model-local function: a node builder and the standard-op body.

One FunctionProto per (mode, activation), all named `mlpdeploy::SparseMLP`, told apart by the IR
v10 `overload` `<mode>_<activation>`. No optional inputs (a model without biases gets zero ones):

    topk:      x [..., d], w_up [h, d], b_up [h], w_down_t [h, d_out], b_down [d_out], p_a [d, r], p_b [r, h], k int64 [1]
    threshold: x [..., d], w_gate [d, h], b_gate [h], w_up [h, d], b_up [h], w_down_t [h, d_out], b_down [d_out], threshold [1|h]

Attributes `mode`, `activation`, `plugin_namespace`, `plugin_version` (declared; the overload
fixes the body). Body (default-domain opset >= 18), X2 = x as [M, d]:

    topk:      S = (X2·P_a)·P_b;  I = TopK(S, k, axis 1);  Mask = ScatterElements(0[M,h], I, 1)
    threshold: G = act(X2·W_gate + b_gate);  Mask = |G| > t
    U = NonZero(ReduceMax(Mask, axis 0))                         the batch union, ascending
    topk:      H = act(Gemm(X2, W_up[U], b_up[U], transB)) ⊙ Mask[:, U]
    threshold: H = (G ⊙ Mask)[:, U] ⊙ Gemm(X2, W_up[U], b_up[U], transB)
    Y = Gemm(H, W_down_t[U], b_down) reshaped to [..., d_out]
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import DEFAULT_OPSET, DOMAIN, IR_VERSION
from mlpdeploy.errors import OpError

from ..gated_mlp.onnx_function import activation_nodes
from ..onnx_body import Body, add_function, initializer, require_op, set_plugin_attributes
from .reference import ACTIVATIONS, MODES

OP_TYPE = "SparseMLP"
OPSET_VERSION = 1
MIN_ONNX_OPSET = 18
DEFAULT_ONNX_OPSET = DEFAULT_OPSET
DECLARED_ATTRIBUTES = ("mode", "activation", "plugin_namespace", "plugin_version")
INPUT_NAMES = {
    "topk": ("x", "w_up", "b_up", "w_down_t", "b_down", "p_a", "p_b", "k"),
    "threshold": ("x", "w_gate", "b_gate", "w_up", "b_up", "w_down_t", "b_down", "threshold"),
}

__all__ = ["ACTIVATIONS", "INPUT_NAMES", "MODES", "OP_TYPE", "ensure_function", "make_model", "sparse_mlp_node"]


def overload_name(mode: str, activation: str) -> str:
    if mode not in MODES:
        raise OpError(f"unknown SparseMLP mode {mode!r}; available are {', '.join(MODES)}")
    if activation not in ACTIVATIONS:
        raise OpError(f"unknown SparseMLP activation {activation!r}; available are {', '.join(ACTIVATIONS)}")
    return f"{mode}_{activation}"


def sparse_mlp_node(x: ir.Value, *weights: ir.Value, mode: str, activation: str, name: str | None = None) -> ir.Node:
    """A `mlpdeploy::SparseMLP` node (not in any graph): x then the mode's 7 inputs (INPUT_NAMES)."""
    overload = overload_name(mode, activation)
    if len(weights) != 7 or any(w is None for w in weights):
        raise OpError(f"SparseMLP {mode} takes x and 7 inputs ({', '.join(INPUT_NAMES[mode][1:])}), got {len(weights)}")
    node = ir.Node(DOMAIN, OP_TYPE, [x, *weights], attributes=[ir.AttrString("mode", mode), ir.AttrString("activation", activation)],
                   overload=overload, num_outputs=1, name=name)
    set_plugin_attributes(node)
    w_down_t = weights[2] if mode == "topk" else weights[4]
    out = node.outputs[0]
    out.dtype = x.dtype
    if x.shape is not None and w_down_t.shape is not None and len(w_down_t.shape) == 2:
        out.shape = ir.Shape([*x.shape[:-1], w_down_t.shape[1]])
    if name:
        out.name = f"{name}_output"
    return node


def ensure_function(model: ir.Model, node: ir.Node) -> None:
    """Add the model-local function `node` resolves to (once) and the `mlpdeploy` opset import."""
    require_op(node, OP_TYPE)
    mode, activation = node.attributes.get_string("mode", "topk"), node.attributes.get_string("activation", "relu")
    overload = overload_name(mode, activation)
    if len(node.inputs) != 8:
        raise OpError(f"SparseMLP node {node.name!r} must have 8 inputs ({', '.join(INPUT_NAMES[mode])}); build it with sparse_mlp_node")
    add_function(model, node, OP_TYPE, OPSET_VERSION, overload, lambda opset: build_function(mode, activation, opset))


def build_function(mode: str, activation: str, onnx_opset: int) -> ir.Function:
    """The FunctionProto (as an ir.Function) of one SparseMLP variant."""
    if onnx_opset < MIN_ONNX_OPSET:
        raise OpError(f"SparseMLP's function body needs ONNX opset >= {MIN_ONNX_OPSET} (ReduceMax axes input), the model has {onnx_opset}")
    overload = overload_name(mode, activation)
    body = Body(INPUT_NAMES[mode])
    op = body.op
    named = dict(zip(INPUT_NAMES[mode], body.inputs))
    x, w_up, b_up, w_down_t, b_down = (named[n] for n in ("x", "w_up", "b_up", "w_down_t", "b_down"))

    def const(value: float, like: ir.Value) -> ir.Value:
        return op("CastLike", body.float(value), like)

    def last_dim(value: ir.Value) -> ir.Value:
        return op("Slice", op("Shape", value), body.ints([-1]), body.ints([np.iinfo(np.int64).max]))

    x2 = op("Reshape", x, op("Concat", body.ints([-1]), last_dim(w_up), axis=0))
    if mode == "topk":
        scores = op("MatMul", op("MatMul", x2, named["p_a"]), named["p_b"])
        _, idx = op("TopK", scores, named["k"], outputs=2, axis=1, largest=1, sorted=1)
        zeros = op("CastLike", op("ConstantOfShape", op("Shape", scores)), scores)
        ones = op("CastLike", op("ConstantOfShape", op("Shape", idx), value=ir.tensor(np.array([1.0], np.float32))), scores)
        mask = op("ScatterElements", zeros, idx, ones, axis=1)
    else:
        gate = activation_nodes(op, const, op("Add", op("MatMul", x2, named["w_gate"]), named["b_gate"]), activation)
        mask = op("CastLike", op("Greater", op("Abs", gate), named["threshold"]), gate)
    union = op("Reshape", op("NonZero", op("ReduceMax", mask, body.ints([0]), keepdims=0)), body.ints([-1]))
    up = op("Gemm", x2, op("Gather", w_up, union, axis=0), op("Gather", b_up, union, axis=0), transB=1)
    if mode == "topk":
        hidden = op("Mul", activation_nodes(op, const, up, activation), op("Gather", mask, union, axis=1))
    else:
        hidden = op("Mul", op("Gather", op("Mul", gate, mask), union, axis=1), up)
    y2 = op("Gemm", hidden, op("Gather", w_down_t, union, axis=0), b_down)
    lead = op("Slice", op("Shape", x), body.ints([0]), body.ints([-1]))
    y = op("Reshape", y2, op("Concat", lead, last_dim(w_down_t), axis=0))
    return body.function(y, OP_TYPE, overload, onnx_opset, DECLARED_ATTRIBUTES)


def random_weights(d: int, h: int, d_out: int, *, mode: str, rank: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded float32 weights of one SparseMLP (inputs after x, in order), scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    w_up = rng.standard_normal((h, d)) * d**-0.5
    arrays = {}
    if mode == "threshold":
        arrays |= {"w_gate": rng.standard_normal((d, h)) * d**-0.5, "b_gate": rng.standard_normal(h) * 0.1}
    arrays |= {"w_up": w_up, "b_up": rng.standard_normal(h) * 0.1, "w_down_t": rng.standard_normal((h, d_out)) * h**-0.5,
               "b_down": rng.standard_normal(d_out) * 0.1}
    if mode == "topk":  # a predictor that sees the true pre-activations through a rank-`rank` bottleneck
        u, s, vt = np.linalg.svd(w_up.T, full_matrices=False)
        r = min(rank, d, h)
        arrays |= {"p_a": u[:, :r] * s[:r], "p_b": vt[:r]}
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def make_model(d: int, h: int, d_out: int | None = None, *, mode: str = "topk", activation: str = "relu", k: int | None = None,
               threshold: float = 0.5, rank: int = 16, dtype: str = "float32", x_rank: int = 2, seed: int = 0,
               weights: dict[str, np.ndarray] | None = None, onnx_opset: int = DEFAULT_ONNX_OPSET) -> ir.Model:
    """A standalone model of one SparseMLP node (input `x` of `x_rank` dims, output `y`), for tests and benchmarks."""
    d_out = d if d_out is None else d_out
    arrays = weights if weights is not None else random_weights(d, h, d_out, mode=mode, rank=rank, seed=seed)
    values = [initializer(n, arrays[n].astype(dtype)) for n in INPUT_NAMES[mode][1:-1]]
    if mode == "topk":
        values.append(initializer("k", np.array([h // 10 if k is None else k], dtype=np.int64)))
    else:
        values.append(initializer("threshold", np.array([threshold], dtype=dtype)))
    ir_dtype = ir.DataType.from_numpy(np.dtype(dtype))
    x = ir.Value(name="x", shape=ir.Shape([*(f"dim{i}" for i in range(x_rank - 1)), d]), type=ir.TensorType(ir_dtype))
    node = sparse_mlp_node(x, *values, mode=mode, activation=activation, name="sparse_mlp")
    node.outputs[0].name = "y"
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=values, opset_imports={"": onnx_opset}, name="sparse_mlp")
    model = ir.Model(graph, ir_version=IR_VERSION, producer_name="mlpdeploy")
    ensure_function(model, node)
    return model
