"""Vision Transformer: Conv2d patch embedding, class token, learned positions, pre-LN blocks,
GELU MLP as `blocks.{i}.mlp.fc1` / `mlp.fc2` (timm naming)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from mlpdeploy.model.bundle import ModelBundle

from .common import digits_task, image_bundle, seeded, trained_bundle
from .layers import Attention, Mlp, PatchEmbed


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 32
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 10
    dim: int = 64
    depth: int = 2
    n_heads: int = 4
    mlp_dim: int = 256


def gelu_mlp(cfg: ViTConfig) -> nn.Module:
    """ViT's MLP: fc1 → GELU → fc2."""
    return Mlp(cfg.dim, cfg.mlp_dim, act=nn.GELU)


class ViTBlock(nn.Module):
    def __init__(self, cfg: ViTConfig, mlp: Callable[[ViTConfig], nn.Module] = gelu_mlp):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.attn = Attention(cfg.dim, cfg.n_heads, bias=True, causal=False, out_name="proj")
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.mlp = mlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """pixel_values [batch, C, H, W] → logits [batch, classes] (from the class token).

    `mlp(cfg)` builds each block's MLP (ViT's GELU MLP by default; KAT passes its GR-KAN block).
    """

    def __init__(self, cfg: ViTConfig, mlp: Callable[[ViTConfig], nn.Module] = gelu_mlp):
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, cfg.in_chans, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, cfg.dim))
        self.blocks = nn.ModuleList(ViTBlock(cfg, mlp) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


TINY = ViTConfig()
SMALL = ViTConfig(image_size=8, patch_size=2, in_chans=1, dim=64, depth=4, n_heads=4, mlp_dim=128)


def build(cfg: ViTConfig, seed: int = 0, task=None, **metadata) -> ModelBundle:
    """A bundle of a ViT with config `cfg`, weights drawn from `seed`."""
    model = seeded(lambda: ViT(cfg), seed)
    return image_bundle(model, cfg.in_chans, cfg.image_size, task, **metadata)


def vit_tiny() -> ModelBundle:
    """3×32×32 input, patch 4 (64 patches), dim 64, 2 blocks, GELU MLP 256; random weights."""
    return build(TINY, task=digits_task(TINY))


def vit_small() -> ModelBundle:
    """Trained on digits: 1×8×8 input, patch 2 (16 patches), dim 64, 4 blocks, GELU MLP 128 (see cards/vit-small.md)."""
    return trained_bundle(build, SMALL, "vit-small", digits_task(SMALL))
