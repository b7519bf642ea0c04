"""quantize-weights: linear weights (MatMul/Gemm, GatedMLP) as 4-bit NVFP4, MXFP4 or INT4 codes.

Sites are linears with constant weights, keyed by their module scope (`layers.0.mlp.down_proj`,
`lm_head`): all those matching `scope` (globs separated by `|`) and not `exclude`, or the
sites of a plan, each with its own `format` (and `block`). The weight is quantized by
`mlpdeploy.quant` (exact rules there) and written in the form the build target reads
(`weight_forms`):

| target | int4 / int4asym | nvfp4 | mxfp4 |
|---|---|---|---|
| `ort` | MatMulNBits (4-bit, `accuracy_level`) | `fp4_form`: MatMulNBits 8-bit re-encoding (exact weights) or W4A16MatMul function | same as nvfp4 |
| `trt` | DequantizeLinear(INT4) (int4 only: TensorRT takes no zero points) | two-level DequantizeLinear (FLOAT4E2M1 ← FLOAT8E4M3FN, opset 23) | W4A16MatMul plugin (datacenter TensorRT) |

`fp4_form=auto` picks the 8-bit MatMulNBits at accuracy level 4 and the function otherwise:
ONNX Runtime 1.32's 8-bit MatMulNBits has a fast kernel only with int8 activations (level 4);
at level 0 it was ~190× slower than a float32 MatMul (bench/quant.py --parts forms), while the
function body is folded by ONNX Runtime into a float32 weight at session creation.
`accuracy_level` is the MatMulNBits node attribute (0: float32 activations, exact; 4: int8
activations). It is written on every node, so ONNX Runtime's session setting
`session.qdq_matmulnbits_accuracy_level` (which mlpdeploy pins to 0) never applies to them:
that setting only governs ONNX Runtime's own DequantizeLinear→MatMul fusion.

A GatedMLP node keeps its fused gate_up weight as one matrix: for the `trt` weight forms its
weight inputs are fed by DequantizeLinear; otherwise (an operator form) the node is expanded
into its standard-op body and its two MatMuls replaced (one MatMulNBits for the fused gate_up).
Its role sites are the module paths of the linears fuse-gated-mlp recorded on the node (else,
by name, `<mlp>.gate_proj`+`<mlp>.up_proj` (or `gate_up_proj`, `w1`+`w3`) and `<mlp>.down_proj`
(`w2`)); when gate and up are planned in different formats, the one with
more bits is used. NVFP4's per-tensor scale is then shared by gate and up (one tensor).
"""

from __future__ import annotations

import fnmatch
import json

import numpy as np
import onnx_ir as ir
from onnxscript import version_converter

from mlpdeploy.contract import DEFAULT_BLOCK, DOMAIN, WEIGHT_BLOCKS, WEIGHT_FORMATS, ir_version_for
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.passes.base import PassReport, ReferenceEdit, RewritePass
from mlpdeploy.passes.matching import (
    LINEAR_OPS,
    STANDARD_DOMAINS,
    Linear,
    MatchFailure,
    inline_call,
    match_linear,
    remove_dead,
    value_names,
)
from mlpdeploy.passes.matching.gated import LINEARS_KEY
from mlpdeploy.passes.options import Option
from mlpdeploy.passes.weight_forms import (
    FORM_OPSET,
    MS,
    Emitted,
    Writer,
    dequantized_weight,
    form_for,
    matmul_nbits,
    padded_input,
    stored_bytes,
    w4a16,
)
from mlpdeploy.quant import Format, QuantError, QuantizedSite, make_format, parse_format, quantized_sites_view
from mlpdeploy.scopes import module_path

TARGETS = ("ort", "trt")
FP4_FORMS = ("auto", "nbits8", "function")
BLOCKS = (0, *sorted({b for blocks in WEIGHT_BLOCKS.values() for b in blocks}))  # 0: the format's default
DEFAULT_ACCURACY_LEVEL = 4  # measured: bench/quant.py (llama-small perplexity equal to level 0; level 0 kernels ~70x slower)
GATED_ROLES = {  # GatedMLP weight input -> the child linears it fuses, one tuple per naming family
    1: (("gate_proj", "up_proj"), ("gate_up_proj",), ("w1", "w3")),
    2: (("down_proj",), ("w2",)),
}


class QuantizeWeights(RewritePass):
    """Quantize linear weights to NVFP4, MXFP4 or INT4 in the form the build target reads."""

    name = "quantize-weights"
    description = "linear/GatedMLP weights as NVFP4, MXFP4 or INT4 (MatMulNBits for ONNX Runtime, DequantizeLinear/plugin for TensorRT)"
    options = {
        "format": Option("int4", "weight format (a plan's sites name their own)", choices=WEIGHT_FORMATS),
        "block": Option(0, "block size along the input dim (0: the format's default, "
                           + ", ".join(f"{f} {b}" for f, b in DEFAULT_BLOCK.items()) + ")", choices=BLOCKS),
        "accuracy_level": Option(DEFAULT_ACCURACY_LEVEL, "MatMulNBits' accuracy_level (0 float32 activations, 4 int8 activations)",
                                 choices=(0, 1, 2, 3, 4)),
        "target": Option("auto", "weight forms for ONNX Runtime (ort) or TensorRT (trt); auto: the build's backend", choices=("auto", *TARGETS)),
        "scope": Option("*", "module-path globs to quantize, separated by |"),
        "exclude": Option("", "module-path globs to leave alone, separated by |"),
        "fp4_form": Option("auto", "FP4 on ONNX Runtime: 8-bit MatMulNBits (nbits8) or the W4A16MatMul function; auto: nbits8 at "
                                   "accuracy level 4", choices=FP4_FORMS),
    }

    reference = ("edited: each quantized linear holds the weights its codes decode to, with int8 inputs where "
                 "MatMulNBits computes at accuracy level 4 (reference_edit)")

    @classmethod
    def reference_edit(cls, report: dict) -> ReferenceEdit | None:
        """The torch linears of every rewritten site hold the weights its codes decode to (and take
        int8 inputs where MatMulNBits does): outputs and layers are compared with that model."""
        sites = quantized_sites(report)
        if not sites:
            return None
        int8 = sum(len(s.linears) for s in sites if s.int8_block)
        linears = sum(len(s.linears) for s in sites)
        note = (f"outputs and layers compared with the torch model whose {linears} quantized linears hold the weights their codes "
                f"decode to" + (f" ({int8} of them with int8 inputs, as MatMulNBits computes at accuracy level 4)" if int8 else "")
                + "; the task metric with the original weights")
        return ReferenceEdit(lambda module: quantized_sites_view(module, sites), note, "int8" if int8 else None)

    def rewrite(self, model: ir.Model) -> PassReport:
        self.target = "ort" if self.config["target"] == "auto" else self.config["target"]
        self.level = self.config["accuracy_level"]
        self.fp4_form = self.config["fp4_form"]
        if self.fp4_form == "auto":
            self.fp4_form = "nbits8" if self.level == 4 else "function"
        self.default = make_format(self.config["format"], self.config["block"])
        for fmt in self._named_formats():
            self._check_target(fmt)
        self.report = PassReport(self.name, details={"target": self.target, "sites": {}, "kept": []})
        self.taken, self.done = value_names(model.graph), set()
        self._raise_opset(model)
        for node in list(model.graph):
            if node.domain == DOMAIN and node.op_type == "GatedMLP":
                self._gated(model, node)
        for node in list(model.graph):
            if node.op_type in LINEAR_OPS and node.domain in STANDARD_DOMAINS and id(node) not in self.done and node.graph is model.graph:
                self._linear(model, node)
        if self.report.rewritten and self.target == "ort":
            model.opset_imports.setdefault(MS, 1)
        self._totals()
        return self.report

    # ---- which sites, which formats

    def _named_formats(self) -> list[Format]:
        if self.sites is None:
            return [self.default]
        return [self._site_format(settings) for settings in self.sites.values()]

    def _site_format(self, settings: dict) -> Format:
        fmt = parse_format(str(settings.get("format", self.default)))
        return make_format(fmt.name, int(settings.get("block", 0)) or fmt.block)

    def _format_for(self, scope: str) -> Format | None:
        """The format for the linear at `scope`, or None when it is not a site."""
        if self.sites is not None:
            settings = self.site_settings(scope)
            return None if settings is None else self._site_format(settings)
        wanted = any(fnmatch.fnmatchcase(scope, p) for p in _globs(self.config["scope"]))
        excluded = any(fnmatch.fnmatchcase(scope, p) for p in _globs(self.config["exclude"]))
        return self.default if wanted and not excluded else None

    def _check_target(self, fmt: Format) -> None:
        if self.target == "trt" and fmt.name == "int4asym":
            raise MlpdeployError(f"pass {self.name}: TensorRT's DequantizeLinear takes no INT4 zero points; use format=int4 (symmetric) for TensorRT targets")

    def _raise_opset(self, model: ir.Model) -> None:
        """TensorRT forms need DequantizeLinear with blocks (opset 21) and FLOAT4E2M1 (opset 23)."""
        if self.target != "trt":
            return
        need = max((FORM_OPSET["dq-nvfp4" if f.name == "nvfp4" else "dq-int4"] for f in self._named_formats() if f.name != "mxfp4"), default=0)
        current = model.opset_imports.get("", 1)
        if need > current:
            version_converter.convert_version(model, need)
            self.report.details["opset"] = {"from": current, "to": need}
        model.ir_version = ir_version_for(need, model.ir_version)

    # ---- rewriting

    def _linear(self, model: ir.Model, node: ir.Node) -> None:
        value = node.outputs[0]
        uses = value.uses()
        if len(uses) == 1 and uses[0].node.op_type == "Add" and not value.is_graph_output():
            value = uses[0].node.outputs[0]
        try:
            linear = match_linear(value)
        except MatchFailure:
            try:
                linear = match_linear(node.outputs[0])
            except MatchFailure:
                return  # not a linear with a constant weight (e.g. attention's q·kᵀ)
        scope = module_path(node) or node.name or "(unnamed)"
        fmt = self._format_for(scope)
        if fmt is None:
            self.report.details["kept"].append(scope)
            return
        try:
            q = fmt.quantize(linear.weight_array().astype(np.float32), f"{scope} weight")
        except QuantError as exc:
            self.report.skipped[scope] = exc.args[0]
            return
        emitted = self._operator(model, linear.input, q, scope, _dtype(linear))
        bias = linear.bias_array()
        tail = emitted.output
        writer = Writer(model.graph, scope, self.taken)
        if bias is not None:
            tail = _typed(writer.node("Add", [tail, writer.constant("bias", bias)]).outputs[0], emitted.output, _dtype(linear), q.n)
        self._replace(model.graph, linear, emitted.nodes + writer.nodes, tail, node)
        self._record(scope, fmt, emitted, q.k, q.n, [scope])

    def _operator(self, model: ir.Model, x: ir.Value, q, scope: str, dtype: np.dtype) -> Emitted:
        """x · W for the target: an operator form, or MatMul by a weight form."""
        writer = Writer(model.graph, scope, self.taken)
        form = form_for(q.format, self.target, self.fp4_form)
        if form.startswith("w4a16"):
            emitted = w4a16(writer, model, x, q, plugin=form == "w4a16-plugin")
        elif form == "dq":
            padded = q.k % q.block != 0
            weight = dequantized_weight(writer, q, padded)
            matmul = writer.node("MatMul", [padded_input(writer, x, q, dtype) if padded else x, weight.output])
            emitted = Emitted(writer.nodes, matmul.outputs[0], weight.bytes, weight.form)
        else:
            emitted = matmul_nbits(writer, x, q, self.level, dtype)
        _typed(emitted.output, x, dtype, q.n)
        return emitted

    def _replace(self, graph: ir.Graph, linear: Linear, nodes: list[ir.Node], output: ir.Value, template: ir.Node) -> None:
        for new in nodes:
            new.metadata_props.update(template.metadata_props)  # the linear's module scope, for per-layer checks
        graph.insert_before(linear.nodes[0], nodes)
        if linear.output.dtype is not None:  # (an inlined function body's values carry no type)
            output.dtype, output.shape = linear.output.dtype, linear.output.shape
        old = linear.output
        if old.is_graph_output():  # keep the graph's output name on the new value
            name, old.name = old.name, None
            output.name = name
        ir.convenience.replace_all_uses_with(old, output, replace_graph_outputs=True)
        inputs = [v for n in linear.nodes for v in n.inputs]
        for n in reversed(linear.nodes):
            graph.remove(n, safe=True)
        self.taken.difference_update(remove_dead(graph, inputs))
        self.report.rewritten += 1

    def _gated(self, model: ir.Model, node: ir.Node) -> None:
        scope = module_path(node) or node.name
        recorded = json.loads(node.metadata_props.get(LINEARS_KEY, "{}"))
        found = {i: self._role_format(scope, i, recorded.get("gate_up" if i == 1 else "down")) for i in GATED_ROLES}
        roles = {i: (fmt, why) for i, (fmt, why, _) in found.items()}
        self.linears = {i: list(paths) for i, (_, _, paths) in found.items()}
        if all(fmt is None for fmt, _ in roles.values()):
            self.report.details["kept"].append(scope)
            return
        for i, (fmt, why) in roles.items():
            if fmt is None and why:
                self.report.skipped[f"{scope} ({'gate_up' if i == 1 else 'down'})"] = why
        weight_form = self.target == "trt" and all(fmt is None or (fmt.name != "mxfp4" and _rows(node.inputs[i]) % fmt.block == 0)
                                                   for i, (fmt, _) in roles.items())
        if weight_form:
            for i, (fmt, _) in roles.items():
                if fmt is not None:
                    self._gated_weight(model, node, i, fmt, scope)
            return
        weights = {i: node.inputs[i] for i in GATED_ROLES}
        for new in inline_call(model, node, self.taken):
            for i, (fmt, _) in roles.items():
                if new.op_type == "MatMul" and new.inputs[1] is weights[i]:
                    self.done.add(id(new))
                    if fmt is not None:
                        self._gated_matmul(model, new, fmt, f"{scope}.{'gate_up' if i == 1 else 'down'}", self.linears[i])
        self.report.details.setdefault("expanded", []).append(scope)

    def _role_format(self, mlp: str, index: int, recorded: list[str] | None) -> tuple[Format | None, str | None, tuple[str, ...]]:
        """The format for a GatedMLP weight (gate_up or down), why not when a plan half-names it,
        and the module paths of the torch linears it stands for: those fuse-gated-mlp recorded
        on the node, else the naming family found (else the first)."""
        families = [tuple(recorded)] if recorded else [tuple(f"{mlp}.{child}" for child in family) for family in GATED_ROLES[index]]
        for family in families:
            formats = [self._format_for(path) for path in family]
            if all(f is None for f in formats):
                continue
            if any(f is None for f in formats):
                return None, f"the plan quantizes only part of the fused weight ({', '.join(family)}); it is kept in float", family
            return max(formats, key=lambda f: f.bits_per_weight(4096, 4096)), None, family
        return None, None, families[0]

    def _gated_weight(self, model: ir.Model, node: ir.Node, index: int, fmt: Format, scope: str) -> None:
        weight = node.inputs[index]
        site = f"{scope}.{'gate_up' if index == 1 else 'down'}"
        try:
            q = fmt.quantize(weight.const_value.numpy().astype(np.float32), f"{site} weight")
        except (QuantError, AttributeError) as exc:
            self.report.skipped[site] = exc.args[0] if isinstance(exc, QuantError) else "its weight is not an initializer"
            return
        writer = Writer(model.graph, site, self.taken)
        emitted = dequantized_weight(writer, q)
        for new in emitted.nodes:
            new.metadata_props.update(node.metadata_props)
        model.graph.insert_before(node, emitted.nodes)
        node.replace_input_with(index, emitted.output)
        self.taken.difference_update(remove_dead(model.graph, [weight]))
        self.report.rewritten += 1
        self._record(site, fmt, emitted, q.k, q.n, self.linears[index])

    def _gated_matmul(self, model: ir.Model, matmul: ir.Node, fmt: Format, site: str, linears: list[str]) -> None:
        linear = match_linear(matmul.outputs[0])
        q = fmt.quantize(linear.weight_array().astype(np.float32), f"{site} weight")
        emitted = self._operator(model, linear.input, q, site, _dtype(linear))
        self._replace(model.graph, linear, emitted.nodes, emitted.output, matmul)
        self._record(site, fmt, emitted, q.k, q.n, linears)

    # ---- report

    def _record(self, site: str, fmt: Format, emitted: Emitted, k: int, n: int, linears: list[str]) -> None:
        self.report.details["sites"][site] = {"format": str(fmt), "form": emitted.form, "shape": [k, n], "bytes": emitted.bytes,
                                              "format_bits_per_weight": round(fmt.bits_per_weight(k, n), 4), "linears": linears}
        if emitted.form.startswith("MatMulNBits") and self.level == 4:
            self.report.details["sites"][site]["int8_activations"] = True

    def _totals(self) -> None:
        sites = self.report.details["sites"].values()
        weights = sum(s["shape"][0] * s["shape"][1] for s in sites)
        stored = sum(s["bytes"] for s in sites)
        self.report.details["weights"] = weights
        self.report.details["bytes"] = stored
        self.report.details["float32_bytes"] = 4 * weights
        self.report.details["stored_bits_per_weight"] = round(8 * stored / weights, 4) if weights else None


def _globs(text: str) -> list[str]:
    return [p.strip() for p in str(text).replace(";", "|").split("|") if p.strip()]


def _typed(value: ir.Value, x: ir.Value, dtype: np.dtype, n: int) -> ir.Value:
    """Give a new [..., N] value a type (and shape, where x's is known) when it has none: a
    value without one (as in an expanded GatedMLP body, whose values carry no types) stops ONNX
    shape inference at the contrib op, and convert-precision then cannot type what follows."""
    if value.dtype is None:
        value.dtype = x.dtype if x.dtype is not None else ir.DataType.from_numpy(dtype)
    if value.shape is None and x.shape is not None:
        value.shape = ir.Shape([*x.shape[:-1], n])
    return value


def _rows(weight: ir.Value) -> int:
    shape = weight.shape if weight.shape is not None else weight.const_value.shape
    return int(shape[0])


def _dtype(linear: Linear) -> np.dtype:
    return linear.dtype.numpy() if linear.dtype in (ir.DataType.FLOAT, ir.DataType.FLOAT16) else np.dtype(np.float32)


def planned_bytes(fmt: Format, k: int, n: int, target: str, accuracy_level: int = DEFAULT_ACCURACY_LEVEL) -> int:
    """Bytes a [K, N] float32 weight in `fmt` will take once this pass writes it for `target`
    (ort | trt) with its default FP4 form: what a planner for that target should minimize."""
    fp4_form = "nbits8" if accuracy_level == 4 else "function"
    return stored_bytes(fmt, k, n, form_for(fmt, target, fp4_form))


def quantized_sites(report: dict) -> list[QuantizedSite]:
    """From a quantize-weights report: each rewritten weight as the torch linears it stands for
    (a fused gate_up: gate and up, quantized as one matrix), its format, and the block its inputs
    are rounded to int8 in where MatMulNBits computes at accuracy level 4. What the torch
    reference of the quantized model emulates (`mlpdeploy.quant.quantized_sites_view`)."""
    sites = []
    for site in report.get("sites", {}).values():
        fmt = parse_format(site["format"])
        sites.append(QuantizedSite(tuple(site["linears"]), fmt, fmt.block if site.get("int8_activations") else None))
    return sites
