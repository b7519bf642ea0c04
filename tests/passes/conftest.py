"""Helpers for pass tests (onnxscript's recipe): apply the pass, assert op types, run the full
ONNX checker, compare numerics in ONNX Runtime CPU with ITS graph optimizations disabled (so
its own fusions cannot hide or fake ours)."""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import warnings
from types import SimpleNamespace

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from mlpdeploy.passes.pipeline import PassSpec, run_pipeline
from mlpdeploy.scopes import SCOPES_KEY

# max |error| allowed, relative to max(1, max |reference|)
TOLERANCE = {np.dtype("float32"): 2e-5, np.dtype("float16"): 1e-2}


def session(model: ir.Model | onnx.ModelProto) -> ort.InferenceSession:
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def checked(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto that passed onnx.checker's full check (with strict shape inference)."""
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def fuse(model: ir.Model, **options) -> dict:
    """Run fuse-gated-mlp through the pipeline (so cleanup runs too); returns its report."""
    spec = PassSpec("fuse-gated-mlp", options)
    return run_pipeline(model, [spec])[0]


def op_counts(model: ir.Model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph)


def assert_close(actual: np.ndarray, reference: np.ndarray, what: str = "") -> float:
    actual, reference = np.asarray(actual), np.asarray(reference)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    assert np.isfinite(actual).all(), f"{what}: non-finite output"
    scale = max(1.0, float(np.abs(reference.astype(np.float32)).max(initial=0.0)))
    err = float(np.abs(actual.astype(np.float32) - reference.astype(np.float32)).max(initial=0.0))
    tol = TOLERANCE[actual.dtype] * scale
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g} ({actual.dtype})"
    return err


def export(module: torch.nn.Module, example: tuple, *, optimize: bool = True, opset: int = 20, dynamic: bool = True) -> ir.Model:
    """torch.onnx.export(dynamo=True) with dynamic batch/seq on every 3-D input, quietly."""
    shapes = None
    if dynamic:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        shapes = tuple({0: batch, 1: seq} if t.dim() == 3 else {0: batch} for t in example)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, example, dynamo=True, optimize=optimize, opset_version=opset, dynamic_shapes=shapes, verbose=False
        )
    return program.model


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
def h():
    """The helpers above, for test modules (pytest imports them with --import-mode=importlib)."""
    return SimpleNamespace(
        session=session, run=run, checked=checked, fuse=fuse, op_counts=op_counts, assert_close=assert_close, export=export
    )
