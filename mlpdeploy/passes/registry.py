"""Rewrite passes, registered here one line each ("name": "module:Class" inside mlpdeploy.passes)."""

from __future__ import annotations

from mlpdeploy.registry import Registry

PASSES = Registry("pass", "passes", "mlpdeploy.passes", {
    "fuse-gated-mlp": "fuse_gated_mlp:FuseGatedMLP",
    "fuse-group-rational": "fuse_group_rational:FuseGroupRational",
    "convert-precision": "precision:ConvertPrecision",
    "drop-layers": "drop_layers:DropLayers",
    "ort-decoder": "ort_decoder:OrtDecoder",
    "ort-fusions": "ort_fusions:OrtFusions",
    "sparse-mlp": "sparse_mlp:SparseMLPPass",
    "quantize-weights": "quantize_weights:QuantizeWeights",
    "quantize-embedding": "quantize_embedding:QuantizeEmbedding",
})
