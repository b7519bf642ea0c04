"""Helpers for pass tests: `g` (a GraphBuilder for matcher tests) and `h` (the graph-test helpers of
tests/conftest.py, plus `fuse`: fuse-gated-mlp through the pipeline)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx_ir as ir
import pytest

from mlpdeploy.passes.pipeline import PassSpec, run_pipeline
from mlpdeploy.scopes import SCOPES_KEY


def fuse(model: ir.Model, **options) -> dict:
    """Run fuse-gated-mlp through the pipeline (so cleanup runs too); returns its report."""
    spec = PassSpec("fuse-gated-mlp", options)
    return run_pipeline(model, [spec])[0]


def _array(data) -> np.ndarray:
    """`data` as numpy, Python floats as float32 (Python ints stay int64; arrays keep their dtype)."""
    array = np.asarray(data)
    return array.astype(np.float32) if array.dtype == np.float64 and not isinstance(data, np.ndarray) else array


class GraphBuilder:
    """A tiny onnx_ir graph for matcher tests, built in order: inputs, initializers, nodes; each
    node's output is named after the node (`name`, so skip reasons read 'mm', not 'val_3'), and
    `graph(*outputs)` puts them in an ir.Graph (is_graph_input/is_initializer need one)."""

    def __init__(self):
        self.inputs: list[ir.Value] = []
        self.initializers: list[ir.Value] = []
        self.nodes: list[ir.Node] = []

    def input(self, name: str, shape=("batch", 4), dtype=ir.DataType.FLOAT) -> ir.Value:
        value = ir.val(name, dtype, list(shape))
        self.inputs.append(value)
        return value

    def init(self, name: str, array, *, graph_input: bool = False) -> ir.Value:
        """An initializer; also a graph input if asked."""
        array = _array(array)
        tensor = ir.tensor(array, name=name)
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
        self.initializers.append(value)
        if graph_input:
            self.inputs.append(value)
        return value

    def op(self, op_type: str, *inputs, name: str | None = None, outputs: int = 1, domain: str = "", scope=None, **attrs):
        name = name or f"{op_type.lower()}_{len(self.nodes)}"
        metadata = {SCOPES_KEY: repr(scope)} if scope is not None else None
        node = ir.node(op_type, list(inputs), attrs, domain=domain, num_outputs=outputs, name=name, metadata_props=metadata)
        for k, value in enumerate(node.outputs):
            value.name = name if outputs == 1 else f"{name}_{k}"
        self.nodes.append(node)
        return node.outputs[0] if outputs == 1 else tuple(node.outputs)

    def const(self, name: str, array) -> ir.Value:
        """A Constant node's output."""
        return self.op("Constant", name=name, value=ir.tensor(_array(array)))

    def graph(self, *outputs: ir.Value) -> ir.Graph:
        opsets = {"": 20, **{n.domain: 1 for n in self.nodes if n.domain not in ("", "ai.onnx")}}
        return ir.Graph(self.inputs, list(outputs), nodes=self.nodes, initializers=self.initializers, opset_imports=opsets)


@pytest.fixture
def g() -> GraphBuilder:
    """A fresh GraphBuilder."""
    return GraphBuilder()


@pytest.fixture(scope="session")
def h(h):
    """The shared graph-test helpers (tests/conftest.py) plus `fuse`, for test modules."""
    return SimpleNamespace(**vars(h), fuse=fuse)
