"""ort-fusions: onnxscript's ONNX Runtime fusions, with mlpdeploy's own ops left one node each.

Run by the `onnxruntime` backend on every graph that is not a `--kv-cache` decoder (those get
`ort-decoder`), and available as a pass. It applies what `onnxscript.rewriter.ort_fusions.
optimize_for_ort` applies — Gelu / FastGelu / BiasGelu, RMSNorm (plain and with a residual),
rotary embeddings, the decomposed
scaled-dot-product attention as MultiHeadAttention / Attention, Transpose/scale + MatMul as
FusedMatMul; not LayerNormalization with a residual as SkipLayerNormalization, measured slower
here (NORMS_AND_GELU) — in its order, but through the individual `fuse_*` functions, because
`optimize_for_ort` inlines every model-local function first (its `optimizer.optimize` call):
an mlpdeploy op (GatedMLP, GroupRational, SparseMLP, ...) must stay one node for `--ort-kernels`
to run its compiled kernel. The functions' bodies are set aside while the rules run, so they
stay the portable definitions they were.

All or nothing for intermediate ops: the attention fusions go through ops of onnxscript's
`ai.onnxruntime._fusion` domain (RotaryEmbedding, SDPA, ...) that later rules turn into ONNX
Runtime contrib ops; those have no kernel, so when any is left the attention fusions are
undone (the graph is fused again without them) and the report says which ops were left.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable

import onnx_ir as ir
from onnx_ir.passes.common import (
    CommonSubexpressionEliminationPass,
    InlinePass,
    RemoveUnusedNodesPass,
    RemoveUnusedOpsetsPass,
    ShapeInferencePass,
)
from onnxscript import optimizer
from onnxscript.rewriter import pattern, rewrite
from onnxscript.rewriter.ort_fusions import fused_matmul_rule_sets, instance_to_group_normalization, shape_optimization, softmax
from onnxscript.rewriter.ort_fusions.attention import fuse_attention
from onnxscript.rewriter.ort_fusions.bias_gelu import fuse_bias_gelu
from onnxscript.rewriter.ort_fusions.cos_sin_cache import fuse_cos_sin_cache
from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu
from onnxscript.rewriter.ort_fusions.gelu import fuse_gelu
from onnxscript.rewriter.ort_fusions.gqa import fuse_gqa
from onnxscript.rewriter.ort_fusions.gqa_packed_qkv import fuse_qkv_gqa
from onnxscript.rewriter.ort_fusions.mha import fuse_mha1, fuse_mha2
from onnxscript.rewriter.ort_fusions.mha_bias import fuse_mha_bias
from onnxscript.rewriter.ort_fusions.mha_scale import fuse_mha_scale
from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
from onnxscript.rewriter.ort_fusions.rotary_embedding import fuse_partial_rotary_embedding, fuse_rotary_embedding
from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
from onnxscript.rewriter.ort_fusions.sdpa_via_mha import replace_sdpa_by_mha
from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_rms_normalization
from onnxscript.rewriter.rules.common import _gemm_to_matmul_add

from mlpdeploy.backends.onnxruntime.passes import adopt, copy_model
from mlpdeploy.backends.onnxruntime.passes.gqa import INTERMEDIATE_DOMAIN
from mlpdeploy.passes.base import PassReport, RewritePass

# onnxscript's fusions in optimize_for_ort's order (fuse_xformers), by the name its counts use;
# the attention ones may leave intermediate ops and are undone together when they do.
# Not fuse_skip_layer_normalization: Add + LayerNormalization → SkipLayerNormalization made every zoo model
# that has it slower or no faster on ONNX Runtime 1.32's CPU kernels (2 threads, measured side by side:
# mixer-small 8–13% slower at batch 1/4/16, vit-small 3–5%, kat-tiny −1…+3%); ONNX Runtime's own
# optimizer still fuses where its kernel wins. The RMS variant (SkipSimplifiedLayerNormalization) stays.
NORMS_AND_GELU = [
    ("erf_gelu", fuse_erfgelu),
    ("rms_normalization", fuse_rms_normalization),
    ("skip_rms_normalization", fuse_skip_rms_normalization),
]
ATTENTION = [
    ("rotary_embedding", fuse_rotary_embedding),
    ("cos_sin_cache", fuse_cos_sin_cache),
    ("partial_rotary_embedding", fuse_partial_rotary_embedding),
    ("sdpa", fuse_sdpa),
    ("gqa", fuse_gqa),
    ("packed_qkv_for_gqa", fuse_qkv_gqa),
    ("mha1", fuse_mha1),
    ("mha2", fuse_mha2),
    ("mha_scale", fuse_mha_scale),
    ("mha_bias", fuse_mha_bias),
    ("attention", fuse_attention),
]
LATE = [("gelu", fuse_gelu), ("bias_gelu", fuse_bias_gelu)]
SDPA_VIA_MHA = ("sdpa_via_mha", replace_sdpa_by_mha)
# then ORT_PATTERN_REWRITE_RULES, one rule set at a time for the counts
ORT_PATTERN_RULES = [
    ("softmax", softmax.rules.rules),
    ("group_normalization", instance_to_group_normalization.rules.rules),
    ("fused_matmul", fused_matmul_rule_sets.fused_matmul_rule_sets()),
]


def _prepare(model: ir.Model) -> None:
    """optimize_for_ort's preliminaries (Gemm as MatMul + Add, shapes, constant folding, its
    shape simplifications) without inlining model-local functions."""
    rewrite(model, [_gemm_to_matmul_add.gemm_to_matmul_add_rule])
    ShapeInferencePass()(model)
    optimizer.optimize(model, inline=False)
    shape_optimization.rules.apply_to_model(model)
    optimizer.optimize(model, inline=False)


def _fuse(model: ir.Model, attention: bool) -> dict[str, int]:
    """Apply the fusions to `model`'s graph (its functions set aside); counts by fusion name."""
    functions = dict(model.functions)
    model.functions.clear()
    try:
        counts = {}
        steps: list[tuple[str, Callable]] = [*NORMS_AND_GELU, *(ATTENTION if attention else []), *LATE,
                                            *([SDPA_VIA_MHA] if attention else [])]
        for name, fuse in steps:
            if name == "partial_rotary_embedding":
                CommonSubexpressionEliminationPass()(model)
            if name == "attention" and not (counts["mha1"] or counts["mha2"]):
                continue  # as fuse_xformers: Attention builds on a MultiHeadAttention fusion
            counts[name] = int(fuse(model, apply_shape_inference=True) if name == "sdpa" else fuse(model))
        # as fuse_xformers' last step: an intermediate op that a rule made a function (RotaryEmbedding)
        # and no later rule consumed becomes its matched nodes again
        InlinePass(lambda function: function.domain == INTERMEDIATE_DOMAIN)(model)
        for name, rules in ORT_PATTERN_RULES:
            counts[name] = int(pattern.RewriteRuleSet(rules).apply_to_model(model))
        RemoveUnusedNodesPass()(model)
    finally:
        model.functions.update(functions)
    return {k: v for k, v in counts.items() if v}


def intermediate_ops(model: ir.Model) -> list[str]:
    return sorted({n.op_type for n in model.graph.all_nodes() if n.domain == INTERMEDIATE_DOMAIN})


class OrtFusions(RewritePass):
    """onnxscript's ORT fusions on the graph, mlpdeploy's functions kept as single nodes."""

    name = "ort-fusions"
    description = ("onnxscript's ONNX Runtime fusions (Gelu/FastGelu/BiasGelu, RMS/SkipRMS norm, rotary, "
                   "MultiHeadAttention/Attention, FusedMatMul) without inlining mlpdeploy's ops")
    phase = "lowering"

    def rewrite(self, model: ir.Model) -> PassReport:
        report = PassReport(self.name, details={"fusions": {}})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _prepare(model)
            attempt = copy_model(model)
            fusions = _fuse(attempt, attention=True)
            left = intermediate_ops(attempt)
            if left:
                report.skipped["attention"] = (f"onnxscript's attention fusions left {', '.join(left)} (ops of its intermediate "
                                               f"domain {INTERMEDIATE_DOMAIN}, which ONNX Runtime has no kernel for): undone")
                attempt = copy_model(model)
                fusions = _fuse(attempt, attention=False)
        before = collections.Counter(n.op_type for n in model.graph)
        adopt(model, attempt)
        RemoveUnusedOpsetsPass()(model)
        after = collections.Counter(n.op_type for n in model.graph)
        report.details["fusions"] = {op: n for op, n in sorted(after.items()) if op not in before and op != "Constant"}
        report.details["rules"] = fusions  # onnxscript's count per fusion rule (as optimize_for_ort reports them)
        report.rewritten = sum(report.details["fusions"].values())
        return report
