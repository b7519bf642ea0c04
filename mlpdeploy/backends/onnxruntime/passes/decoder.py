"""ort-decoder: a cached decoder's attention and norms as ONNX Runtime's fused contrib ops.

Run by the `onnxruntime` backend on graphs exported with `--kv-cache` (and available as a pass).
onnxscript's ORT fusion rules do what they cover:

* RMSNorm and residual Add + RMSNorm/LayerNorm → `SimplifiedLayerNormalization`,
  `SkipSimplifiedLayerNormalization`, `SkipLayerNormalization` (com.microsoft);
* the rotate-half rotary and the decomposed scaled-dot-product attention → intermediate ops.

mlpdeploy's own rule (`attention_to_gqa`, the part no library covers for a cache with explicit
positions and an arbitrary mask) turns each layer's Reshape/Transpose → rotary → Concat(past) →
repeat-KV → attention → Transpose/Reshape into one `com.microsoft::GroupQueryAttention` that
rotates q and k itself at the graph's own `position_ids` (`do_rotary=1` with cos/sin tables),
appends to the cache and attends with the model's own additive mask as `attention_bias`; then
packs the q, k and v projections into one MatMul whose output is the attention's packed query
(no Split), packs 4-bit siblings (a quantized MLP's gate and up: `pack_siblings.py`) into one
MatMulNBits and a Split, and makes the cache's length come from
`attention_mask` (`cache_shapes.py`), so the cache may be one preallocated buffer per layer that
ONNX Runtime appends to in place (`shared_cache_buffer` in the report), and gives the lm_head an
optional `logits_to_keep` input (`last_logits.py`: a prefill computes its last token's logits
only). Exact for any padding
(left-padded batches included), since positions and mask are the model's, not derived.

All or nothing: when the attention of some cached layer is not matched, the attention fusions
are dropped (intermediate ops have no ONNX Runtime kernel) and the report says why; the norm
fusions are kept.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, RemoveUnusedOpsetsPass, ShapeInferencePass
from onnxscript import optimizer
from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
from onnxscript.rewriter.ort_fusions.rotary_embedding import fuse_rotary_embedding
from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_layer_normalization, fuse_skip_rms_normalization

from mlpdeploy.backends.onnxruntime.passes import adopt, copy_model
from mlpdeploy.backends.onnxruntime.passes.cache_shapes import detach_cache_shapes
from mlpdeploy.backends.onnxruntime.passes.compact_mask import compact_attention_bias
from mlpdeploy.backends.onnxruntime.passes.gqa import INTERMEDIATE_DOMAIN, GQAInputs, attention_rules
from mlpdeploy.backends.onnxruntime.passes.last_logits import keep_last_logits
from mlpdeploy.backends.onnxruntime.passes.pack_qkv import pack_qkv
from mlpdeploy.backends.onnxruntime.passes.pack_siblings import pack_sibling_nbits
from mlpdeploy.contract import CACHE_INPUT
from mlpdeploy.passes.base import PassReport, RewritePass
from mlpdeploy.passes.options import Option

NORM_FUSIONS = {
    "SimplifiedLayerNormalization": fuse_rms_normalization,
    "SkipSimplifiedLayerNormalization": fuse_skip_rms_normalization,
    "SkipLayerNormalization": fuse_skip_layer_normalization,
}


def _prepare(model: ir.Model) -> None:
    """Shapes and constant folding, which the fusion rules' checks rely on. Model-local functions
    stay called (not inlined): an mlpdeploy op must remain one node for `--ort-kernels` to run its
    compiled kernel (measured: an inlined SparseMLP ran its 20-node body instead)."""
    ShapeInferencePass()(model)
    optimizer.optimize(model, inline=False)


def _cached_layers(model: ir.Model) -> list[str]:
    return [v.name for v in model.graph.inputs if (m := CACHE_INPUT.fullmatch(v.name or "")) and m.group(2) == "key"]


class OrtDecoder(RewritePass):
    """Fuse a cached decoder's norms and attention into ONNX Runtime contrib ops."""

    name = "ort-decoder"
    description = ("cached decoders for ONNX Runtime: fused RMS/skip norms, one GroupQueryAttention per layer with rotary inside and packed QKV "
                   "(exact masks and positions), an optional logits_to_keep input on the lm_head")
    options = {"max_positions": Option(0, "rows of the rotary tables (0: the manifest's max positions, else 4096)", minimum=0)}
    phase = "lowering"

    def rewrite(self, model: ir.Model) -> PassReport:
        report = PassReport(self.name, details={"fusions": {}})
        fusions = report.details["fusions"]
        _prepare(model)
        for op, fuse in NORM_FUSIONS.items():
            fusions[op] = int(fuse(model))
        layers = _cached_layers(model)
        if not layers:
            report.skipped["attention"] = "the graph has no past_key_values inputs (export it with --kv-cache)"
        else:
            attempt = copy_model(model)
            count, why = self._attention(attempt, len(layers))
            if why is None:
                adopt(model, attempt)
                fusions["rotary inside GroupQueryAttention"], fusions["GroupQueryAttention"] = count
                fusions["packed QKV"] = pack_qkv(model)
                why_not_shared = detach_cache_shapes(model)
                report.details["shared_cache_buffer"] = why_not_shared is None
                if why_not_shared:
                    report.skipped["shared cache buffer"] = why_not_shared
                why_not_compact = compact_attention_bias(model, self.config["max_positions"] or 4096)
                fusions["compact attention mask"] = int(why_not_compact is None)
                if why_not_compact:
                    report.skipped["compact attention mask"] = why_not_compact
            else:
                report.skipped["attention"] = why
        fusions["packed MatMulNBits siblings"] = pack_sibling_nbits(model)  # a gated MLP's gate and up, once quantized
        if layers:
            why_not_last = keep_last_logits(model)
            fusions["logits for the last positions"] = int(why_not_last is None)
            if why_not_last:
                report.skipped["logits for the last positions"] = why_not_last
        RemoveUnusedNodesPass()(model)
        RemoveUnusedOpsetsPass()(model)
        report.rewritten = sum(fusions.values())
        return report

    def _attention(self, model: ir.Model, layers: int) -> tuple[tuple[int, int], str | None]:
        """Fuse on `model` (a copy); (rotary, gqa) counts and None, or why it cannot be used."""
        fuse_rotary_embedding(model)
        fuse_sdpa(model)
        inputs = GQAInputs.add_to(model, self.config["max_positions"] or 4096)
        gqa = attention_rules(inputs).apply_to_model(model) if inputs.ok else 0
        RemoveUnusedNodesPass()(model)
        left = sorted({n.op_type for n in model.graph if n.domain == INTERMEDIATE_DOMAIN})
        if gqa != layers or left:
            reasons = [f"{gqa} of {layers} cached layers matched the attention pattern"]
            if inputs.why:
                reasons.append(inputs.why)
            if left:
                reasons.append(f"unfused {', '.join(left)} remain")
            return (0, 0), "; ".join(reasons)
        rotary = sum(1 for n in model.graph if n.op_type == "GroupQueryAttention" and n.attributes.get_int("do_rotary", 0))
        return (rotary, gqa), None
