"""A FAN (Fourier Analysis Network) classifier: FANLayers (`layers.{i}`) on flattened images, a linear head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlpdeploy.model.bundle import ModelBundle

from .common import digits_task, image_bundle, seeded, trained_bundle
from .kan_layers import FANLayer


@dataclass(frozen=True)
class FANConfig:
    image_size: int = 8
    in_chans: int = 1
    num_classes: int = 10
    hidden: int = 128
    depth: int = 2
    p_ratio: float = 0.25
    activation: str = "gelu"


class FANClassifier(nn.Module):
    """pixel_values [batch, C, H, W] → flatten → FANLayers → Linear head → logits [batch, classes]."""

    def __init__(self, cfg: FANConfig):
        super().__init__()
        self.config = cfg
        widths = [cfg.in_chans * cfg.image_size**2] + [cfg.hidden] * cfg.depth
        self.layers = nn.ModuleList(FANLayer(a, b, cfg.p_ratio, cfg.activation) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


TINY = FANConfig()


def build(cfg: FANConfig, seed: int = 0, task=None, **metadata) -> ModelBundle:
    model = seeded(lambda: FANClassifier(cfg), seed)
    return image_bundle(model, cfg.in_chans, cfg.image_size, task, **metadata)


def fan_tiny() -> ModelBundle:
    """Trained on digits: 64 pixels → FANLayer(64, 128) → FANLayer(128, 128) (P = 32, gelu) → Linear(128, 10) (see cards/fan-tiny.md)."""
    return trained_bundle(build, TINY, "fan-tiny", digits_task(TINY))
