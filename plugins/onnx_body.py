"""A small builder for ops' ONNX function bodies (standard ops only), shared by the op folders."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import DEFAULT_OPSET, DOMAIN, IR_VERSION, PLUGIN_NAMESPACE, PLUGIN_VERSION
from mlpdeploy.errors import OpError

INT64_MAX = np.iinfo(np.int64).max


def attr(name: str, value) -> ir.Attr:
    """An ONNX attribute from a Python value (float, int, str, list of ints, tensor)."""
    if isinstance(value, str):
        return ir.AttrString(name, value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return ir.AttrInt64s(name, [int(v) for v in value])
    if isinstance(value, float):
        return ir.AttrFloat32(name, value)
    if isinstance(value, bool) or isinstance(value, int):
        return ir.AttrInt64(name, int(value))
    if isinstance(value, ir.TensorProtocol):
        return ir.AttrTensor(name, value)
    raise TypeError(f"unsupported attribute {name}={value!r}")


class Body:
    """Collects the nodes of a function body; `op(...)` appends one and returns its output(s)."""

    def __init__(self, input_names: Sequence[str]):
        self.inputs = [ir.Value(name=n) for n in input_names]
        self.nodes: list[ir.Node] = []

    def op(self, op_type: str, *args: ir.Value, outputs: int = 1, **attrs):
        node = ir.Node("", op_type, args, attributes=[attr(k, v) for k, v in attrs.items()], num_outputs=outputs)
        self.nodes.append(node)
        return node.outputs if outputs > 1 else node.outputs[0]

    def ints(self, values: Sequence[int]) -> ir.Value:
        return self.op("Constant", value=ir.tensor(np.array(values, dtype=np.int64)))

    def float(self, value: float) -> ir.Value:
        return self.op("Constant", value_float=value)

    def slice(self, data: ir.Value, start: int, end: int | None, axis: int) -> ir.Value:
        """data[start:end] along `axis` (end None: to the end)."""
        return self.op("Slice", data, self.ints([start]), self.ints([INT64_MAX if end is None else end]), self.ints([axis]))

    def to_float(self, value: ir.Value) -> ir.Value:
        return self.op("Cast", value, to=ir.DataType.FLOAT.value)

    def function(self, output: ir.Value, op_type: str, overload: str, opset: int, attributes: Sequence[str]) -> ir.Function:
        """The body as the model-local function `mlpdeploy::<op_type>` with `overload`, declaring `attributes`."""
        output.name = "y"
        for i, node in enumerate(self.nodes):
            node.name = f"n{i}_{node.op_type}"
            for j, out in enumerate(node.outputs):
                if out.name is None:
                    out.name = f"t{i}_{j}"
        graph = ir.Graph(self.inputs, [output], nodes=self.nodes, opset_imports={"": opset}, name=f"{op_type}_{overload}")
        declared = [ir.Attr(name, ir.AttributeType.UNDEFINED, None) for name in attributes]
        return ir.Function(DOMAIN, op_type, overload, graph=graph, attributes=declared)


def static_shape(value: ir.Value, what: str) -> tuple[int, ...]:
    """The value's shape when every dim is known (from its type or its constant), else a one-line error."""
    shape = value.shape
    if shape is None and value.const_value is not None:
        shape = value.const_value.shape
    if shape is None or not all(isinstance(d, int) for d in shape):
        raise OpError(f"{what} {value.name!r} needs a static shape, got {shape}")
    return tuple(int(d) for d in shape)


def require_op(node: ir.Node, op_type: str) -> None:
    """A one-line error unless `node` is a `mlpdeploy::<op_type>` node."""
    if node.domain != DOMAIN or node.op_type != op_type:
        raise OpError(f"expected a {DOMAIN}::{op_type} node, got {node.domain}::{node.op_type} {node.name!r}")


def add_function(model: ir.Model, node: ir.Node, op_type: str, opset_version: int, overload: str, build) -> None:
    """Import domain `mlpdeploy` at `opset_version` and add `build(onnx_opset)` as the function of
    `node`'s overload, once; IR v10 (function overloads)."""
    require_op(node, op_type)
    if node.overload != overload:
        raise OpError(f"{op_type} node {node.name!r} has overload {node.overload!r}, but its inputs make it {overload!r}; build it with the op's node builder")
    existing = model.opset_imports.get(DOMAIN)
    if existing is not None and existing != opset_version:
        raise OpError(f"model imports domain {DOMAIN!r} at version {existing}, {op_type} needs {opset_version}")
    model.opset_imports[DOMAIN] = opset_version
    model.ir_version = max(model.ir_version or IR_VERSION, IR_VERSION)
    if (DOMAIN, op_type, overload) in model.functions:
        return
    onnx_opset = model.opset_imports.setdefault("", DEFAULT_OPSET)
    function = build(onnx_opset)
    model.functions[function.identifier()] = function


def initializer(name: str, array: np.ndarray) -> ir.Value:
    """A graph initializer value holding `array`."""
    return ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), const_value=ir.tensor(array, name=name))


def set_plugin_attributes(node: ir.Node) -> None:
    """`plugin_namespace="mlpdeploy"`, `plugin_version="1"`: TensorRT (>= 10.7) then picks the plugin."""
    node.attributes["plugin_namespace"] = ir.AttrString("plugin_namespace", PLUGIN_NAMESPACE)
    node.attributes["plugin_version"] = ir.AttrString("plugin_version", PLUGIN_VERSION)


def standalone_model(build_node, arrays: dict[str, np.ndarray], last_dim: int, *, dtype: str, rank: int, onnx_opset: int,
                     name: str, **attributes) -> tuple[ir.Model, ir.Node]:
    """A model of one op node for tests and benchmarks: input `x` of `rank` dims (all symbolic but
    the last, `last_dim`), the `arrays` as initializers in `dtype` (in the node's input order),
    output `y`. `build_node(x, *weights, name=, **attributes)` makes the node; the caller adds its function."""
    np_dtype = np.dtype(dtype)
    weights = [initializer(k, v.astype(np_dtype)) for k, v in arrays.items()]
    x = ir.Value(name="x", shape=ir.Shape([*(f"dim{i}" for i in range(rank - 1)), last_dim]), type=ir.TensorType(ir.DataType.from_numpy(np_dtype)))
    node = build_node(x, *weights, name=name, **attributes)
    node.outputs[0].name = "y"
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=weights, opset_imports={"": onnx_opset}, name=name)
    return ir.Model(graph, ir_version=IR_VERSION, producer_name="mlpdeploy"), node
