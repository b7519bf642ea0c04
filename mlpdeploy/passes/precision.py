"""fp16 / bf16 for TensorRT's strongly typed networks: an ONNX rewrite that chooses every tensor's type.

A strongly typed TensorRT network computes each layer in the type its ONNX inputs have, so
precision is decided here, in the graph, with the rules of PyTorch autocast:

* LOW_OPS (matrix products) run in the low type: their float inputs are cast down and
  weights are stored in the low type;
* FP32_OPS (normalizations, reductions, Softmax, Pow/Exp/Log/Sqrt/Reciprocal, Cos/Sin, CumSum,
  Range) run in fp32: their inputs are cast up;
* every other op runs in the widest type among its non-constant float inputs (an op fed only by
  constants, e.g. a DequantizeLinear of a weight, takes the low type when everything it feeds
  runs low); constants follow the op they feed, as Python scalars do in torch;
* ops whose output type is an attribute (Cast, ConstantOfShape, Random*) are left alone;
  CastLike(constant, x) takes x's type and counts as a constant;
* graph inputs and outputs keep their types (casts at the edges);
* custom-domain nodes that remain (plugin nodes of the `tensorrt` backend) run in the low type,
  except ONNX Runtime's MatMulNBits at accuracy level 4 (int8 activations), which stays fp32.

Model-local functions are inlined first, except those called as TensorRT plugins, since their
bodies carry no types. fp32 constants outside the fp16 range saturate to ±65504 (counted in the
report). Graphs with control flow (If/Loop/Scan) are refused for fp16/bf16.

ONNX Runtime's CPU provider runs fp16 graphs but has no bf16 MatMul: `emulate_in_fp32` gives the
fp32 graph that rounds every bf16 tensor to bf16 (a Cast down and up), for validation.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import InlinePass, LiftConstantsToInitializersPass, RemoveUnusedNodesPass, ShapeInferencePass

from mlpdeploy.contract import MS_DOMAIN
from mlpdeploy.dtypes import PRECISION_DTYPES, PRECISIONS, check_precision, precision_name
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.passes.base import PassReport, RewritePass
from mlpdeploy.passes.options import Option
from mlpdeploy.plugins.forms import plugin_nodes

FLOATS = tuple(PRECISION_DTYPES.values())

LOW_OPS = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "Attention"})
FP32_OPS = frozenset({
    # normalizations and the reductions they decompose into
    "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization", "GroupNormalization", "InstanceNormalization", "BatchNormalization",
    "LpNormalization", "MeanVarianceNormalization",
    "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd",
    # exponentials, powers and their inverses; angles (rotary embeddings)
    "Softmax", "LogSoftmax", "Pow", "Exp", "Log", "Sqrt", "Reciprocal", "Softplus",
    "Cos", "Sin", "Tan", "Acos", "Asin", "Atan", "Cosh", "Sinh",
    # running sums and index arithmetic
    "CumSum", "Range",
})
FIXED_OPS = frozenset({"Cast", "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform",
                       "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"})
# Float inputs whose type is fixed by the op, not by its data type (never cast).
FIXED_INPUTS = frozenset({("Resize", 1), ("Resize", 2), ("Upsample", 1)})
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
FP16_MAX = float(np.finfo(np.float16).max)


@dataclass
class PrecisionReport:
    precision: str
    low_nodes: int = 0
    fp32_nodes: Counter = field(default_factory=Counter)
    casts: int = 0
    converted_initializers: int = 0
    saturated_values: int = 0
    inlined_functions: int = 0

    def to_json(self) -> dict:
        return {
            "precision": self.precision,
            "low_precision_nodes": self.low_nodes,
            "fp32_nodes": dict(sorted(self.fp32_nodes.items())),
            "casts_inserted": self.casts,
            "converted_initializers": self.converted_initializers,
            "saturated_values": self.saturated_values,
            "inlined_functions": self.inlined_functions,
        }


def convert_precision(model: ir.Model, precision: str) -> PrecisionReport:
    """Rewrite `model` in place so its compute runs in `precision` (rules in the module docstring)."""
    low = check_precision(precision)
    report = PrecisionReport(precision)
    if low == ir.DataType.FLOAT:
        return report
    report.inlined_functions = _inline_functions(model)
    LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    try:
        ShapeInferencePass(strict_mode=False)(model)
    except Exception:  # types recorded by the exporter are used as they are
        pass
    _Converter(model.graph, low, report).run()
    RemoveUnusedNodesPass()(model)
    return report


def _inline_functions(model: ir.Model) -> int:
    plugin_called = {node.op_identifier() for node in plugin_nodes(model)}
    count = sum(1 for key in model.functions if key not in plugin_called)
    if count:
        InlinePass(criteria=lambda f: f.identifier() not in plugin_called)(model)
    return count


def _int8_matmul_nbits(node: ir.Node) -> bool:
    """MatMulNBits at accuracy level 4 (int8 activations) stays fp32: with fp16 activations ONNX
    Runtime 1.32's CPU kernel gave the next node zeros in graphs the fuzzer found (a bias Add
    after it yielded the bias alone; tests/fuzz/test_regressions.py), and its products are int8
    either way (an fp16 input cast up is exact)."""
    level = node.attributes.get("accuracy_level")
    return node.domain == MS_DOMAIN and node.op_type == "MatMulNBits" and level is not None and level.as_int() == 4


class _Converter:
    def __init__(self, graph: ir.Graph, low: ir.DataType, report: PrecisionReport):
        self.graph, self.low, self.report = graph, low, report
        self.const: set[ir.Value] = set(graph.initializers.values())
        self.cache: dict[tuple[int, ir.DataType], ir.Value] = {}

    def role(self, node: ir.Node) -> str:
        if _int8_matmul_nbits(node):
            return "fp32"
        if node.domain not in ("", "ai.onnx"):
            return "low"
        if node.op_type in LOW_OPS:
            return "low"
        if node.op_type in FP32_OPS:
            return "fp32"
        if node.op_type in FIXED_OPS:
            return "fixed"
        return "promote"

    def float_inputs(self, node: ir.Node) -> list[tuple[int, ir.Value]]:
        return [
            (i, v) for i, v in enumerate(node.inputs)
            if v is not None and v.dtype in FLOATS and (node.op_type, i) not in FIXED_INPUTS
        ]

    def run(self) -> None:
        graph = self.graph
        output_types = [v.dtype for v in graph.outputs]
        for node in list(graph):
            if node.op_type in CONTROL_FLOW or any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
                raise MlpdeployError(
                    f"precision {self.report.precision}: node {node.name!r} ({node.op_type}) has subgraphs, which mlpdeploy "
                    "does not convert; build with --precision fp32"
                )
            self.convert_node(node)
        for i, (value, dtype) in enumerate(zip(list(graph.outputs), output_types)):
            if value.dtype != dtype and dtype is not None:
                name = value.name
                value.name = f"{name}.{self.suffix(value.dtype)}"
                cast = ir.node("Cast", [value], {"to": dtype}, name=f"{name}.cast_to_output")
                cast.outputs[0].name, cast.outputs[0].dtype, cast.outputs[0].shape = name, dtype, value.shape
                graph.append(cast)
                graph.outputs[i] = cast.outputs[0]
                self.report.casts += 1
        for name, init in list(graph.initializers.items()):
            if not init.uses() and not init.is_graph_output() and not init.is_graph_input():
                del graph.initializers[name]

    def convert_node(self, node: ir.Node) -> None:
        if node.op_type == "CastLike" and node.domain in ("", "ai.onnx"):
            node.outputs[0].dtype = node.inputs[1].dtype
            if node.inputs[0] in self.const:
                self.const.add(node.outputs[0])
            return
        role = self.role(node)
        inputs = self.float_inputs(node)
        target = None
        if role == "low":
            target = self.low
        elif role == "fp32":
            target = ir.DataType.FLOAT
        elif role == "promote" and inputs:
            live = [v for _, v in inputs if v not in self.const]
            if live:
                target = ir.DataType.FLOAT if any(v.dtype == ir.DataType.FLOAT for v in live) else live[0].dtype
            else:
                target = self.low if self.feeds_only_low(node) else ir.DataType.FLOAT
        if target is not None:
            for i, value in inputs:
                if value.dtype != target:
                    node.replace_input_with(i, self.converted(value, target))
            for out in node.outputs:
                if out.dtype in FLOATS:
                    out.dtype = target
            if target == ir.DataType.FLOAT and role == "fp32":
                self.report.fp32_nodes[node.op_type] += 1
            elif target == self.low and role == "low":
                self.report.low_nodes += 1
        real_inputs = [v for v in node.inputs if v is not None]
        if real_inputs and role != "fixed" and all(v in self.const for v in real_inputs):
            self.const.update(node.outputs)

    def feeds_only_low(self, node: ir.Node, depth: int = 0) -> bool:
        """True if every consumer of the node's outputs runs low (through constant-only chains)."""
        if depth > 8:
            return False
        consumers = [c for out in node.outputs for c in out.consumers()]
        if not consumers or any(out.is_graph_output() for out in node.outputs):
            return False
        for consumer in consumers:
            role = self.role(consumer)
            if role == "low":
                continue
            if role != "promote":
                return False
            others = [v for _, v in self.float_inputs(consumer) if v not in self.const and v not in node.outputs]
            if others or not self.feeds_only_low(consumer, depth + 1):
                return False
        return True

    def converted(self, value: ir.Value, dtype: ir.DataType) -> ir.Value:
        key = (id(value), dtype)
        if key in self.cache:
            return self.cache[key]
        if value.is_initializer() and value.const_value is not None:
            array = value.const_value.numpy()
            if dtype == ir.DataType.FLOAT16:
                finite = np.isfinite(array)
                big = finite & (np.abs(array.astype(np.float64)) > FP16_MAX)
                self.report.saturated_values += int(big.sum())
                array = np.where(big, np.sign(array) * FP16_MAX, array)
            new = ir.Value(name=f"{value.name}.{self.suffix(dtype)}", shape=value.shape, type=ir.TensorType(dtype))
            new.const_value = ir.tensor(array.astype(dtype.numpy()), name=new.name)
            self.graph.register_initializer(new)
            self.report.converted_initializers += 1
            self.const.add(new)
        else:
            cast = ir.node("Cast", [value], {"to": dtype}, name=f"{value.name}.cast_{self.suffix(dtype)}")
            new = cast.outputs[0]
            new.name, new.dtype, new.shape = f"{value.name}.{self.suffix(dtype)}", dtype, value.shape
            producer = value.producer()
            if producer is not None:
                self.graph.insert_after(producer, cast)
            else:
                self.graph.insert_before(self.graph.node(0), cast)
            if value in self.const:
                self.const.add(new)
            self.report.casts += 1
        self.cache[key] = new
        return new

    @staticmethod
    def suffix(dtype: ir.DataType) -> str:
        return precision_name(dtype)


class ConvertPrecision(RewritePass):
    """Convert the graph's compute to fp16/bf16 for a strongly typed TensorRT network (module docstring)."""

    name = "convert-precision"
    description = "compute in fp16/bf16 under autocast rules (matrix products low; norms, reductions, Softmax in fp32); I/O types kept"
    options = {"precision": Option("fp16", "the precision matrix products compute in (fp32: unchanged)", choices=PRECISIONS)}
    phase = "precision"
    reference = "exact within the precision's tolerance (validation picks it from the build's --precision)"

    def rewrite(self, model: ir.Model) -> PassReport:
        report = convert_precision(model, self.config["precision"])
        rewritten = report.low_nodes + sum(report.fp32_nodes.values())
        return PassReport(self.name, rewritten=rewritten, details=report.to_json())


def emulate_in_fp32(model: ir.Model, dtype: ir.DataType = ir.DataType.BFLOAT16) -> int:
    """Rewrite a converted model in place to compute in fp32 while rounding every `dtype` tensor to `dtype`.

    Initializers of `dtype` become the same values in fp32; every node output of `dtype` is
    computed in fp32 and rounded by Cast(to=dtype) → Cast(to=float). Returns how many tensors
    are rounded. Used to validate bf16 graphs where ONNX Runtime has no bf16 kernels.
    """
    graph = model.graph
    for name, init in list(graph.initializers.items()):
        if init.dtype == dtype and init.const_value is not None:
            init.const_value = ir.tensor(init.const_value.numpy().astype(np.float32), name=name)
            init.dtype = ir.DataType.FLOAT
    rounded = 0
    for node in list(graph):
        for out in [o for o in node.outputs if o.dtype == dtype]:
            uses = list(out.uses())
            if node.op_type == "Cast":  # Cast(to=dtype) does the rounding; add the way back up
                anchor, source = node, out
            else:  # compute in fp32, then round
                out.dtype = ir.DataType.FLOAT
                down = ir.node("Cast", [out], {"to": dtype}, name=f"{out.name}.round_down")
                down.outputs[0].dtype, down.outputs[0].shape = dtype, out.shape
                graph.insert_after(node, down)
                anchor, source = down, down.outputs[0]
            up = ir.node("Cast", [source], {"to": ir.DataType.FLOAT}, name=f"{out.name}.round_up")
            up.outputs[0].dtype, up.outputs[0].shape = ir.DataType.FLOAT, out.shape
            graph.insert_after(anchor, up)
            for use in uses:
                use.node.replace_input_with(use.idx, up.outputs[0])
            for i, o in enumerate(graph.outputs):
                if o is out:
                    graph.outputs[i] = up.outputs[0]
            rounded += 1
    return rounded
