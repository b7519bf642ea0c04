"""The zoo's index: a name maps to a builder ("module:function" inside `mlpdeploy.zoo`, the
repository's models/ folder) that returns a ModelBundle, one registration line per model.

The index is data at this floor: `model.source` resolves zoo names through it, and a zoo
model's code is imported by name only when it is built. The zoo's modules import model/
(bundles, data, the cache contract); model/ imports none of them, so the two never form a cycle.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from mlpdeploy.model.bundle import ModelBundle


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: `builder` is "module:function" inside mlpdeploy.zoo, imported lazily."""

    name: str
    builder: str
    description: str
    trained: bool = False

    def build(self) -> ModelBundle:
        module_name, func = self.builder.split(":")
        factory: Callable[[], ModelBundle] = getattr(importlib.import_module(f"mlpdeploy.zoo.{module_name}"), func)
        bundle = factory()
        bundle.source = self.name
        bundle.kind = "zoo"
        return bundle


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("llama-tiny", "llama:llama_tiny", "LLaMA-style decoder: RMSNorm, rotary GQA attention, SwiGLU MLP"),
        ZooEntry("opt-relu-tiny", "opt:opt_relu_tiny", "OPT-style decoder: LayerNorm, learned positions, ReLU MLP"),
        ZooEntry("vit-tiny", "vit:vit_tiny", "Vision Transformer: patch embedding, class token, GELU MLP"),
        ZooEntry("mixer-tiny", "mixer:mixer_tiny", "MLP-Mixer: token-mixing and channel-mixing MLPs"),
        ZooEntry("gmlp-tiny", "gmlp:gmlp_tiny", "gMLP: channel MLP with a spatial gating unit"),
        ZooEntry("llama-small", "llama:llama_small", "LLaMA-style decoder, 4 layers, trained on Python stdlib bytes (perplexity)", trained=True),
        ZooEntry("opt-relu-small", "opt:opt_relu_small", "OPT-style decoder with ReLU MLPs, 4 layers, trained on Python stdlib bytes (perplexity)", trained=True),
        ZooEntry("vit-small", "vit:vit_small", "Vision Transformer on 1x8x8 digits, trained (accuracy)", trained=True),
        ZooEntry("mixer-small", "mixer:mixer_small", "MLP-Mixer on 1x8x8 digits, trained (accuracy)", trained=True),
        ZooEntry("gmlp-small", "gmlp:gmlp_small", "gMLP on 1x8x8 digits, trained (accuracy)", trained=True),
        ZooEntry("kat-tiny", "kat:kat_tiny", "KAT: ViT with GR-KAN MLPs (GroupRational, 8 groups) on 1x8x8 digits, trained (accuracy)", trained=True),
        ZooEntry("kan-tiny", "kan:kan_tiny", "B-spline KAN (efficient-kan KANLinear 64-32-10) on digits, trained (accuracy)", trained=True),
        ZooEntry("fan-tiny", "fan:fan_tiny", "FAN: two FANLayers + linear head on digits, trained (accuracy)", trained=True),
    ]
}


def get(name: str) -> ZooEntry:
    """The zoo entry called `name` (KeyError if absent)."""
    return ZOO[name]
