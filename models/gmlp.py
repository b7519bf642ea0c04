"""gMLP (Liu et al., 2021): per block LayerNorm → channel projection `fc1` (GELU) → spatial
gating unit → `fc2`, with a residual. The spatial gating unit splits the channels in halves
(u, v), normalizes v, mixes it across patches with a token-dimension linear whose weight
starts near zero and bias at one (so the unit starts as identity gating), and returns u ⊙ v.
Names follow timm: `blocks.{i}.mlp_channels.fc1`, `.gate.norm`, `.gate.proj`, `.fc2`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlpdeploy.model.bundle import ModelBundle

from .common import digits_task, image_bundle, seeded, trained_bundle
from .layers import PatchEmbed


@dataclass(frozen=True)
class GMLPConfig:
    image_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 10
    dim: int = 64
    depth: int = 2
    ffn_dim: int = 256


class SpatialGatingUnit(nn.Module):
    def __init__(self, ffn_dim: int, num_patches: int):
        super().__init__()
        self.norm = nn.LayerNorm(ffn_dim // 2, eps=1e-6)
        self.proj = nn.Linear(num_patches, num_patches)

    def init_identity(self) -> None:
        """Paper's init: token-mixing weight near zero, bias one, so the gate starts as 1."""
        nn.init.normal_(self.proj.weight, std=1e-6)
        nn.init.ones_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = x.chunk(2, dim=-1)
        v = self.proj(self.norm(v).transpose(1, 2)).transpose(1, 2)
        return u * v


class GatedMlp(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, num_patches: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.act = nn.GELU()
        self.gate = SpatialGatingUnit(ffn_dim, num_patches)
        self.fc2 = nn.Linear(ffn_dim // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.gate(self.act(self.fc1(x))))


class GMLPBlock(nn.Module):
    def __init__(self, cfg: GMLPConfig, num_patches: int):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp_channels = GatedMlp(cfg.dim, cfg.ffn_dim, num_patches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp_channels(self.norm(x))


class GMLP(nn.Module):
    """pixel_values [batch, C, H, W] → logits [batch, classes] (mean over patches)."""

    def __init__(self, cfg: GMLPConfig):
        super().__init__()
        if cfg.ffn_dim % 2:
            raise ValueError(f"gMLP ffn_dim must be even (split in halves), got {cfg.ffn_dim}")
        self.config = cfg
        self.stem = PatchEmbed(cfg.image_size, cfg.patch_size, cfg.in_chans, cfg.dim)
        self.blocks = nn.ModuleList(GMLPBlock(cfg, self.stem.num_patches) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        for block in self.blocks:
            block.mlp_channels.gate.init_identity()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixel_values)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


TINY = GMLPConfig()
SMALL = GMLPConfig(image_size=8, patch_size=2, in_chans=1, dim=64, depth=4, ffn_dim=128)


def build(cfg: GMLPConfig, seed: int = 0, task=None, **metadata) -> ModelBundle:
    """A bundle of a gMLP with config `cfg`, weights drawn from `seed`."""
    model = seeded(lambda: GMLP(cfg), seed)
    return image_bundle(model, cfg.in_chans, cfg.image_size, task, **metadata)


def gmlp_tiny() -> ModelBundle:
    """3×32×32 input, patch 4 (64 patches), dim 64, 2 blocks, gated MLP 256; random weights."""
    return build(TINY, task=digits_task(TINY))


def gmlp_small() -> ModelBundle:
    """Trained on digits: 1×8×8 input, patch 2 (16 patches), dim 64, 4 blocks, gated MLP 128 (see cards/gmlp-small.md)."""
    return trained_bundle(build, SMALL, "gmlp-small", digits_task(SMALL))
