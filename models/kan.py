"""A B-spline KAN classifier (efficient-kan's KANLinear layers, `layers.{i}`) on flattened images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlpdeploy.model.bundle import ModelBundle

from .common import digits_task, image_bundle, seeded, trained_bundle
from .kan_layers import KANLinear


@dataclass(frozen=True)
class KANConfig:
    image_size: int = 8
    in_chans: int = 1
    num_classes: int = 10
    hidden: tuple[int, ...] = (32,)
    grid_size: int = 5
    spline_order: int = 3
    grid_range: tuple[float, float] = (-1.0, 1.0)


class KANClassifier(nn.Module):
    """pixel_values [batch, C, H, W] → flatten → KANLinear layers → logits [batch, classes]."""

    def __init__(self, cfg: KANConfig):
        super().__init__()
        self.config = cfg
        widths = [cfg.in_chans * cfg.image_size**2, *cfg.hidden, cfg.num_classes]
        self.layers = nn.ModuleList(
            KANLinear(a, b, cfg.grid_size, cfg.spline_order, cfg.grid_range) for a, b in zip(widths[:-1], widths[1:])
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return x


TINY = KANConfig()


def build(cfg: KANConfig, seed: int = 0, task=None, **metadata) -> ModelBundle:
    model = seeded(lambda: KANClassifier(cfg), seed)
    return image_bundle(model, cfg.in_chans, cfg.image_size, task, **metadata)


def kan_tiny() -> ModelBundle:
    """Trained on digits: 64 pixels → KANLinear(64, 32) → KANLinear(32, 10), grid 5, cubic (see cards/kan-tiny.md)."""
    return trained_bundle(build, TINY, "kan-tiny", digits_task(TINY))
