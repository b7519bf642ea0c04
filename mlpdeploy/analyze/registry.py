"""Analyses, registered here one line each ("name": "module:Class" inside mlpdeploy.analyze).
The name is also the analysis' flag on `mlpdeploy analyze` (`--layer-stats`)."""

from __future__ import annotations

from mlpdeploy.registry import Registry

ANALYSES = Registry("analysis", "analyses", "mlpdeploy.analyze", {
    "layer-stats": "layer_stats:LayerStats",
    "quant": "quant_sensitivity:QuantSensitivity",
    "redundancy": "redundancy:Redundancy",
    "sparsity": "sparsity:Sparsity",
    "draft-heads": "draft_heads:DraftHeadsAnalysis",
}, sort=False)
