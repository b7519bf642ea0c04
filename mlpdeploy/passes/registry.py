"""Rewrite passes, registered here one line each ("name": "module:Class" inside mlpdeploy.passes; a
backend's own graph passes by their absolute module, e.g. the onnxruntime backend's ORT fusions)."""

from __future__ import annotations

from mlpdeploy.registry import Registry

PASSES = Registry("pass", "passes", "mlpdeploy.passes", {
    "fuse-gated-mlp": "fuse_gated_mlp:FuseGatedMLP",
    "fuse-group-rational": "fuse_group_rational:FuseGroupRational",
    "convert-precision": "precision:ConvertPrecision",
    "drop-layers": "drop_layers:DropLayers",
    "draft-heads": "draft_heads:DraftHeadsPass",
    "ort-decoder": "mlpdeploy.backends.onnxruntime.passes.decoder:OrtDecoder",
    "ort-fusions": "mlpdeploy.backends.onnxruntime.passes.fusions:OrtFusions",
    "sparse-mlp": "sparse_mlp:SparseMLPPass",
    "quantize-weights": "quantize_weights:QuantizeWeights",
    "quantize-embedding": "mlpdeploy.backends.onnxruntime.passes.quantize_embedding:QuantizeEmbedding",
})
