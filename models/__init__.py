"""mlpdeploy's model zoo (installed as `mlpdeploy.zoo`). One registration line per model."""

from __future__ import annotations

from .registry import ZooEntry

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
