"""Match failures with reasons, and reading nodes, values and constants."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import STANDARD_DOMAINS  # noqa: F401  (re-exported for passes)

CLASSES_KEY = "pkg.torch.onnx.class_hierarchy"
NAMESPACE_KEY = "namespace"
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
