"""OPT-style decoder: LayerNorm (pre-norm), learned positional embeddings, causal attention,
ReLU MLP as `layers.{i}.fc1` / `layers.{i}.fc2` (Hugging Face OPTDecoderLayer naming)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlpdeploy.model.bundle import ModelBundle
from mlpdeploy.model.data import LMTask
from mlpdeploy.model.kv_cache import CacheLayout

from .common import seeded, token_bundle, trained_bundle
from .layers import Attention, decoder_mask


@dataclass(frozen=True)
class OPTConfig:
    vocab_size: int = 256
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ffn_dim: int = 256
    max_positions: int = 128


class OPTBlock(nn.Module):
    def __init__(self, cfg: OPTConfig):
        super().__init__()
        self.self_attn_layer_norm = nn.LayerNorm(cfg.dim)
        self.self_attn = Attention(cfg.dim, cfg.n_heads, bias=True, causal=True, out_name="out_proj")
        self.final_layer_norm = nn.LayerNorm(cfg.dim)
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.activation_fn = nn.ReLU()
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim)

    def forward(self, x: torch.Tensor, cache=None):
        """The block; with `cache` = (past_k, past_v, mask), one cached step returning (x, keys, values)."""
        if cache is None:
            x = x + self.self_attn(self.self_attn_layer_norm(x))
            return x + self._mlp(x)
        attn, k, v = self.self_attn(self.self_attn_layer_norm(x), None, cache)
        x = x + attn
        return x + self._mlp(x), k, v

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(x))))


class OPTLM(nn.Module):
    """input_ids [batch, seq] → logits [batch, seq, vocab]."""

    def __init__(self, cfg: OPTConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.embed_positions = nn.Embedding(cfg.max_positions, cfg.dim)
        self.layers = nn.ModuleList(OPTBlock(cfg) for _ in range(cfg.n_layers))
        self.final_layer_norm = nn.LayerNorm(cfg.dim)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.embed_tokens(input_ids) + self.embed_positions(positions)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(self.final_layer_norm(h))

    def cache_layout(self) -> CacheLayout:
        cfg = self.config
        return CacheLayout(layers=list(range(cfg.n_layers)), kv_heads=cfg.n_heads, head_dim=cfg.dim // cfg.n_heads,
                           max_positions=cfg.max_positions, position_ids=True)

    def forward_cached(self, input_ids, attention_mask, position_ids, past):
        """A decode step with a KV cache (the `CachedDecoder` contract of mlpdeploy.model.kv_cache)."""
        h = self.embed_tokens(input_ids) + self.embed_positions(position_ids)
        mask = decoder_mask(attention_mask, input_ids.shape[1], h.dtype)
        presents = []
        for layer, (past_k, past_v) in zip(self.layers, past):
            h, k, v = layer(h, (past_k, past_v, mask))
            presents.append((k, v))
        return self.lm_head(self.final_layer_norm(h)), presents


TINY = OPTConfig()
SMALL = OPTConfig(dim=128, n_layers=4, n_heads=4, ffn_dim=512, max_positions=256)


def build(cfg: OPTConfig, seed: int = 0, task=None, **metadata) -> ModelBundle:
    """A bundle of an OPT decoder with config `cfg`, weights drawn from `seed`."""
    model = seeded(lambda: OPTLM(cfg), seed)
    return token_bundle(model, cfg.vocab_size, cfg.max_positions, task, **metadata)


def opt_relu_tiny() -> ModelBundle:
    """2 layers, dim 64, 4 heads, ReLU MLP 256, byte vocab; random weights."""
    return build(TINY, task=LMTask(seq_len=TINY.max_positions))


def opt_relu_small() -> ModelBundle:
    """Trained on stdlib bytes: 4 layers, dim 128, 4 heads, ReLU MLP 512, context 256 (see cards/opt-relu-small.md)."""
    return trained_bundle(build, SMALL, "opt-relu-small", LMTask(seq_len=SMALL.max_positions))
