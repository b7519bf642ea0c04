"""LLaMA-style decoder: RMSNorm, rotary grouped-query causal attention, SwiGLU MLP.

Module names follow Hugging Face's LlamaModel (`layers.{i}.self_attn.q_proj`,
`layers.{i}.mlp.gate_proj`, …) so scopes in the exported graph match what users know.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlpdeploy.model.bundle import ModelBundle
from mlpdeploy.model.data import LMTask
from mlpdeploy.model.kv_cache import CacheLayout

from .common import seeded, token_bundle, trained_bundle
from .layers import Attention, RMSNorm, RotaryEmbedding, SwiGLU, decoder_mask


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 256
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    hidden_dim: int = 176
    max_positions: int = 128
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg.dim, cfg.n_heads, cfg.n_kv_heads, bias=False, causal=True, out_name="o_proj")
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.hidden_dim)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], cache=None):
        """The block; with `cache` = (past_k, past_v, mask), one cached step returning (x, keys, values)."""
        if cache is None:
            x = x + self.self_attn(self.input_layernorm(x), rope)
            return x + self.mlp(self.post_attention_layernorm(x))
        attn, k, v = self.self_attn(self.input_layernorm(x), rope, cache)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class LlamaLM(nn.Module):
    """input_ids [batch, seq] → logits [batch, seq, vocab]."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.rotary = RotaryEmbedding(cfg.dim // cfg.n_heads, cfg.max_positions, cfg.rope_theta)
        self.layers = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(input_ids)
        rope = self.rotary(input_ids.shape[1])
        for layer in self.layers:
            h = layer(h, rope)
        return self.lm_head(self.norm(h))

    def cache_layout(self) -> CacheLayout:
        cfg = self.config
        return CacheLayout(layers=list(range(cfg.n_layers)), kv_heads=cfg.n_kv_heads, head_dim=cfg.dim // cfg.n_heads,
                           max_positions=cfg.max_positions, position_ids=True)

    def forward_cached(self, input_ids, attention_mask, position_ids, past):
        """A decode step with a KV cache (the `CachedDecoder` contract of mlpdeploy.model.kv_cache)."""
        h = self.embed_tokens(input_ids)
        rope = self.rotary.at(position_ids)
        mask = decoder_mask(attention_mask, input_ids.shape[1], h.dtype)
        presents = []
        for layer, (past_k, past_v) in zip(self.layers, past):
            h, k, v = layer(h, rope, (past_k, past_v, mask))
            presents.append((k, v))
        return self.lm_head(self.norm(h)), presents


TINY = LlamaConfig()
SMALL = LlamaConfig(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, hidden_dim=344, max_positions=256)


def build(cfg: LlamaConfig, seed: int = 0, task=None, **metadata) -> ModelBundle:
    """A bundle of a LLaMA decoder with config `cfg`, weights drawn from `seed`."""
    model = seeded(lambda: LlamaLM(cfg), seed)
    return token_bundle(model, cfg.vocab_size, cfg.max_positions, task, **metadata)


def llama_tiny() -> ModelBundle:
    """2 layers, dim 64, 4 heads / 2 kv heads, SwiGLU 176, byte vocab; random weights."""
    return build(TINY, task=LMTask(seq_len=TINY.max_positions))


def llama_small() -> ModelBundle:
    """Trained on stdlib bytes: 4 layers, dim 128, 4 heads / 2 kv heads, SwiGLU 344, context 256 (see cards/llama-small.md)."""
    return trained_bundle(build, SMALL, "llama-small", LMTask(seq_len=SMALL.max_positions))
