"""MLP-Mixer: per block a token-mixing MLP (across patches) and a channel-mixing MLP (GELU),
named `blocks.{i}.mlp_tokens.fc1` / `blocks.{i}.mlp_channels.fc1` (timm naming)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlpdeploy.model.bundle import ModelBundle

from .common import digits_task, image_bundle, seeded, trained_bundle
from .layers import Mlp, PatchEmbed


@dataclass(frozen=True)
class MixerConfig:
    image_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 10
    dim: int = 64
    depth: int = 2
    tokens_hidden: int = 32
    channels_hidden: int = 256


class MixerBlock(nn.Module):
    def __init__(self, cfg: MixerConfig, num_patches: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp_tokens = Mlp(num_patches, cfg.tokens_hidden, act=nn.GELU)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp_channels = Mlp(cfg.dim, cfg.channels_hidden, act=nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class Mixer(nn.Module):
    """pixel_values [batch, C, H, W] → logits [batch, classes] (mean over patches)."""

    def __init__(self, cfg: MixerConfig):
        super().__init__()
        self.config = cfg
        self.stem = PatchEmbed(cfg.image_size, cfg.patch_size, cfg.in_chans, cfg.dim)
        self.blocks = nn.ModuleList(MixerBlock(cfg, self.stem.num_patches) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixel_values)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


TINY = MixerConfig()
SMALL = MixerConfig(image_size=8, patch_size=2, in_chans=1, dim=64, depth=4, tokens_hidden=32, channels_hidden=128)


def build(cfg: MixerConfig, seed: int = 0, task=None, **metadata) -> ModelBundle:
    """A bundle of an MLP-Mixer with config `cfg`, weights drawn from `seed`."""
    model = seeded(lambda: Mixer(cfg), seed)
    return image_bundle(model, cfg.in_chans, cfg.image_size, task, **metadata)


def mixer_tiny() -> ModelBundle:
    """3×32×32 input, patch 4 (64 patches), dim 64, 2 blocks, token MLP 32, channel MLP 256; random weights."""
    return build(TINY, task=digits_task(TINY))


def mixer_small() -> ModelBundle:
    """Trained on digits: 1×8×8 input, patch 2 (16 patches), dim 64, 4 blocks, token MLP 32, channel MLP 128 (see cards/mixer-small.md)."""
    return trained_bundle(build, SMALL, "mixer-small", digits_task(SMALL))
