"""KAT (Kolmogorov–Arnold Transformer, Yang & Wang 2024): a ViT whose MLP is a GR-KAN block,
`act1` (GroupRational, identity init) → `fc1` → `act2` (GroupRational, swish init) → `fc2`,
each rational with `groups` channel groups and KAT's shared numerator (`blocks.{i}.mlp.act1`,
`.fc1`, `.act2`, `.fc2`, KAT's naming)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlpdeploy.model.bundle import ModelBundle

from .common import digits_task, image_bundle, seeded, trained_bundle
from .kan_layers import GroupRational
from .vit import ViT, ViTConfig


@dataclass(frozen=True)
class KATConfig(ViTConfig):
    groups: int = 8
    form: str = "A"  # KAT's CUDA/Triton kernels compute form A


class KATMlp(nn.Module):
    """KAT's KAN block: act1 → fc1 → act2 → fc2."""

    def __init__(self, cfg: KATConfig):
        super().__init__()
        self.act1 = GroupRational(cfg.groups, init="identity", form=cfg.form)
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.act2 = GroupRational(cfg.groups, init="swish", form=cfg.form)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act2(self.fc1(self.act1(x))))


class KAT(ViT):
    """pixel_values [batch, C, H, W] → logits [batch, classes]; ViT with GR-KAN MLPs."""

    def __init__(self, cfg: KATConfig):
        super().__init__(cfg, mlp=KATMlp)


TINY = KATConfig(image_size=8, patch_size=2, in_chans=1, dim=64, depth=2, n_heads=4, mlp_dim=128, groups=8)


def build(cfg: KATConfig, seed: int = 0, task=None, **metadata) -> ModelBundle:
    """A bundle of a KAT with config `cfg`, weights drawn from `seed`."""
    model = seeded(lambda: KAT(cfg), seed)
    return image_bundle(model, cfg.in_chans, cfg.image_size, task, **metadata)


def kat_tiny() -> ModelBundle:
    """Trained on digits: 1×8×8 input, patch 2, dim 64, 2 blocks, GR-KAN MLP 128 with 8 groups, form A (see cards/kat-tiny.md)."""
    return trained_bundle(build, TINY, "kat-tiny", digits_task(TINY))
