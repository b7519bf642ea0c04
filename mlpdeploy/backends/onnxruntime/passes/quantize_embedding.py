"""quantize-embedding: an embedding table as 4-bit codes, read by `com.microsoft::GatherBlockQuantized`.

An embedding lookup — a `Gather(table [V, D], ids)` on a constant float table that torch's
exporter made from `aten.embedding` (an nn.Embedding: token tables, learned position tables; not
a rotary cos/sin cache gathered by position), or in a graph without torch's metadata one indexed
by a graph input — becomes
`GatherBlockQuantized(codes, ids, scales, bits=4, block_size=B, quantize_axis=1)`: each row is
cut into blocks of B along D and stored as INT4 (symmetric, `mlpdeploy.quant`'s `int4` rules,
the same as `quantize-weights` applies to an [in=D, out=V] linear), two codes a byte, one scale
per block. For a SmolLM2-sized vocabulary (49,152 × 576) the fp32 table is 113 MB; its codes and
scales are 17.7 MB.

Tied embeddings: when the model's lm_head is already a 4-bit MatMulNBits (run
`quantize-weights` first) whose codes and scales are exactly what quantizing this table gives,
the embedding reads those same initializers (MatMulNBits' [V, D/B, B/2] codes through a Reshape
to [V, D/2]): the table costs no bytes of its own, as in onnxruntime-genai's builder. Otherwise
the table gets its own codes. A table that some other node still reads as float (a tied lm_head
left in float) is skipped: quantizing it would only add bytes.

Exact against its torch reference: the embedding's weight replaced by what its codes decode to
(`mlpdeploy.quant.quantized_sites_view`, which the pass's `sites` feed like quantize-weights').
"""

from __future__ import annotations

import fnmatch

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import MS_DOMAIN as MS
from mlpdeploy.contract import WEIGHT_BLOCKS
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.passes.base import PassReport, ReferenceEdit, RewritePass
from mlpdeploy.passes.matching import add_initializer, constant, remove_dead, unique_name, value_names
from mlpdeploy.passes.options import Option
from mlpdeploy.quant import QuantError, QuantizedSite, column_blobs, make_format, parse_format, quantized_sites_view, signed_int4
from mlpdeploy.scopes import module_path

FORMATS = ("int4",)


class QuantizeEmbedding(RewritePass):
    """Token embedding tables as INT4 GatherBlockQuantized, sharing a tied 4-bit lm_head's codes."""

    name = "quantize-embedding"
    description = "token embedding tables as INT4 GatherBlockQuantized (ONNX Runtime), sharing a tied 4-bit lm_head's codes"
    reference = "edited: each quantized embedding table holds what its codes decode to (a tied lm_head keeps its own weight)"
    options = {
        "format": Option("int4", "symmetric INT4 (quantize-weights' int4)", choices=FORMATS),
        "block": Option(32, "values per scale along the embedding dim", choices=WEIGHT_BLOCKS["int4"]),
        "scope": Option("*", "module-path globs of the embeddings to quantize, separated by |"),
        "target": Option("auto", "ort (auto: compile's --backend family); TensorRT has no GatherBlockQuantized", choices=("auto", "ort", "trt")),
    }

    @classmethod
    def reference_edit(cls, report: dict) -> ReferenceEdit | None:
        """The torch embeddings hold the table their codes decode to (a tied lm_head keeps its own weight)."""
        sites = [QuantizedSite(tuple(site["linears"]), parse_format(site["format"])) for site in report.get("sites", {}).values()]
        if not sites:
            return None
        note = f"the torch model's {len(sites)} quantized embedding table(s) hold what their 4-bit codes decode to"
        return ReferenceEdit(lambda module: quantized_sites_view(module, sites), note)

    def rewrite(self, model: ir.Model) -> PassReport:
        fmt_name, block = str(self.config["format"]), int(self.config["block"])
        if self.config["target"] not in ("auto", "ort"):
            raise MlpdeployError(f"pass {self.name}: target={self.config['target']!r}: GatherBlockQuantized runs in ONNX Runtime only; "
                                 "build with --backend onnxruntime or leave the embedding in float")
        try:
            self.format = make_format(fmt_name, block)
        except QuantError as exc:
            raise MlpdeployError(f"pass {self.name}: {exc.args[0]}") from None
        self.report = PassReport(self.name, details={"sites": {}, "kept": []})
        self.taken = value_names(model.graph)
        for node in list(model.graph):
            if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and node.graph is model.graph:
                self._embedding(model, node)
        if self.report.rewritten:
            model.opset_imports.setdefault(MS, 1)
        return self.report

    def _embedding(self, model: ir.Model, node: ir.Node) -> None:
        table_value, ids = node.inputs[0], node.inputs[1]
        table = constant(table_value) if table_value is not None and table_value.is_initializer() else None
        if table is None or table.ndim != 2 or table.dtype not in (np.float32, np.float16) or node.attributes.get_int("axis", 0) != 0:
            return  # not a lookup in a constant float table (shape glue, index gathers)
        if not _embedding_lookup(node):
            return  # a float table gathered by something else than an embedding (a rotary cos/sin cache)
        scope = module_path(node) or node.name or "(unnamed)"
        if not self._wanted(scope):
            self.report.details["kept"].append(scope)
            return
        vocab, dim = table.shape
        if dim % self.format.block:
            self.report.skipped[scope] = f"embedding dim {dim} is not a multiple of the block {self.format.block}"
            return
        others = sorted({u.node.op_type for u in table_value.uses() if u.node is not node})
        if others or table_value.is_graph_output():
            self.report.skipped[scope] = (f"the table is also read as float by {', '.join(others) or 'a graph output'} (a tied lm_head "
                                          "left in float?); quantize that first (quantize-weights) or keep the table")
            return
        try:
            q = self.format.quantize(np.ascontiguousarray(table.T.astype(np.float32)), f"{scope} table")  # [K=D, N=V]: blocks along D
        except QuantError as exc:
            self.report.skipped[scope] = exc.args[0]
            return
        blob = column_blobs((signed_int4(q.codes) + 8).astype(np.uint8), self.format.block)  # [V, D/B, B/2], MatMulNBits' layout
        scales = np.ascontiguousarray(q.block_scales().T).astype(table.dtype)  # [V, D/B]
        graph, new = model.graph, []
        shared = _tied_nbits(graph, blob, scales)
        if shared is not None:
            codes_3d, scales_value = shared.inputs[1], shared.inputs[2]
            shape = add_initializer(graph, unique_name(f"{scope}.codes_shape", self.taken), np.array([vocab, dim // 2], np.int64))
            reshape = ir.node("Reshape", [codes_3d, shape], name=unique_name(f"{scope}/codes", self.taken))
            new.append(reshape)
            codes, stored, source = reshape.outputs[0], 0, shared.name
        else:
            codes = add_initializer(graph, unique_name(f"{scope}.codes", self.taken), blob.reshape(vocab, dim // 2))
            scales_value = add_initializer(graph, unique_name(f"{scope}.scales", self.taken), scales)
            stored, source = int(blob.nbytes + scales.nbytes), None
        gather = ir.node("GatherBlockQuantized", [codes, ids, scales_value], {"bits": 4, "block_size": self.format.block,
                         "gather_axis": 0, "quantize_axis": 1}, domain=MS, name=unique_name(f"{scope}/GatherBlockQuantized", self.taken))
        new.append(gather)
        for added in new:
            added.metadata_props.update(node.metadata_props)
        graph.insert_before(node, new)
        out = gather.outputs[0]
        out.dtype, out.shape = node.outputs[0].dtype, node.outputs[0].shape
        old = node.outputs[0]
        if old.is_graph_output():
            name, old.name = old.name, None
            out.name = name
        ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        self.taken.difference_update(remove_dead(graph, [table_value]))
        self.report.rewritten += 1
        site = {"format": str(self.format), "form": "GatherBlockQuantized(4-bit)", "shape": [vocab, dim], "bytes": stored,
                "float_bytes": int(table.nbytes)}
        if source is not None:
            site["shares_codes_with"] = source  # the tied lm_head's MatMulNBits
        site["linears"] = [scope]  # the torch reference quantizes this module's weight (quantized_sites)
        self.report.details["sites"][scope] = site

    def _wanted(self, scope: str) -> bool:
        if self.sites is not None:
            return self.site_settings(scope) is not None
        return any(fnmatch.fnmatchcase(scope, p.strip()) for p in str(self.config["scope"]).split("|") if p.strip())


TORCH_OP_KEYS = ("pkg.torch.onnx.class_hierarchy", "pkg.torch.onnx.fx_node")


def _embedding_lookup(node: ir.Node) -> bool:
    """Whether the Gather is an embedding lookup: exported from torch's `aten.embedding` (an
    nn.Embedding), or — in a graph without torch's metadata — indexed by a graph input (the ids)."""
    recorded = [node.metadata_props.get(key) for key in TORCH_OP_KEYS if node.metadata_props.get(key)]
    if recorded:
        return any("aten.embedding" in text for text in recorded)
    return node.inputs[1] is not None and node.inputs[1].is_graph_input()


def _tied_nbits(graph: ir.Graph, blob: np.ndarray, scales: np.ndarray) -> ir.Node | None:
    """A symmetric 4-bit MatMulNBits whose codes and scales are exactly `blob` and `scales` (the
    table's transpose quantized alike: a tied lm_head), else None."""
    vocab, blocks, half = blob.shape
    for node in graph:
        if node.op_type != "MatMulNBits" or node.domain != MS or len(node.inputs) < 3:
            continue
        attrs = node.attributes
        if (attrs.get_int("bits", 4), attrs.get_int("N", 0), attrs.get_int("K", 0), attrs.get_int("block_size", 0)) != (4, vocab, blocks * half * 2, half * 2):
            continue
        if any(v is not None for v in node.inputs[3:]):  # zero points, g_idx or bias: not the symmetric form
            continue
        codes, node_scales = node.inputs[1], node.inputs[2]
        if not (codes.is_initializer() and node_scales.is_initializer()):
            continue
        found_codes, found_scales = constant(codes), constant(node_scales)
        if (found_codes is not None and found_scales is not None and found_codes.shape == blob.shape and found_scales.shape == scales.shape
                and found_scales.dtype == scales.dtype and np.array_equal(found_codes, blob) and np.array_equal(found_scales, scales)):
            return node
    return None
