"""Properties of the shared layers and architectures, each checked against an independent reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mlpdeploy.zoo import ZOO
from mlpdeploy.zoo.layers import Attention, RMSNorm, RotaryEmbedding, apply_rotary


def test_rmsnorm_matches_torch():
    torch.manual_seed(0)
    ours = RMSNorm(16, eps=1e-5)
    ref = torch.nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(ours(x), ref(x))


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(8, 64)
    cos, sin = rope(64)
    torch.manual_seed(0)
    q, k = torch.randn(8), torch.randn(8)

    def score(i, j):
        qi = apply_rotary(q.view(1, 1, 1, 8), cos[i:i + 1], sin[i:i + 1])
        kj = apply_rotary(k.view(1, 1, 1, 8), cos[j:j + 1], sin[j:j + 1])
        return (qi * kj).sum()

    assert torch.allclose(score(5, 2), score(40, 37), atol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 4), atol=1e-3)
    assert torch.allclose(apply_rotary(q.view(1, 1, 1, 8), cos[9:10], sin[9:10]).norm(), q.norm(), atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_grouped_query_attention_matches_explicit_softmax(causal):
    torch.manual_seed(0)
    attn = Attention(32, n_heads=4, n_kv_heads=2, causal=causal).eval()
    x = torch.randn(2, 6, 32)
    b, s, hd = 2, 6, 8
    q = attn.q_proj(x).view(b, s, 4, hd).transpose(1, 2)
    k = attn.k_proj(x).view(b, s, 2, hd).transpose(1, 2).repeat_interleave(2, dim=1)
    v = attn.v_proj(x).view(b, s, 2, hd).transpose(1, 2).repeat_interleave(2, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if causal:
        scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    ref = attn.o_proj((F.softmax(scores, -1) @ v).transpose(1, 2).reshape(b, s, 32))
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["llama-tiny", "opt-relu-tiny"])
def test_decoders_are_causal(name):
    model = ZOO[name].build().module
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 256
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_llama_names_and_shapes_follow_hf():
    model = ZOO["llama-tiny"].build().module
    names = dict(model.named_modules())
    cfg = model.config
    assert cfg.n_layers >= 2 and cfg.n_kv_heads < cfg.n_heads
    for i in range(cfg.n_layers):
        for sub in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "self_attn.q_proj", "self_attn.o_proj",
                    "input_layernorm", "post_attention_layernorm"):
            assert f"layers.{i}.{sub}" in names
    k_proj = names["layers.0.self_attn.k_proj"]
    assert k_proj.out_features == cfg.n_kv_heads * cfg.dim // cfg.n_heads
    assert names["layers.0.mlp.gate_proj"].out_features == cfg.hidden_dim


def test_opt_mlp_is_relu_fc1_fc2():
    model = ZOO["opt-relu-tiny"].build().module
    layer = model.layers[0]
    assert isinstance(layer.activation_fn, torch.nn.ReLU)
    x = torch.randn(2, 4, model.config.dim)
    with torch.no_grad():
        hidden = layer.activation_fn(layer.fc1(layer.final_layer_norm(x)))
    assert (hidden == 0).float().mean() > 0.2  # ReLU gives exact zeros: the sparsity later passes use


@pytest.mark.parametrize("name,mlps", [
    ("vit-tiny", ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]),
    ("mixer-tiny", ["blocks.0.mlp_tokens.fc1", "blocks.0.mlp_channels.fc2"]),
    ("gmlp-tiny", ["blocks.0.mlp_channels.fc1", "blocks.0.mlp_channels.gate.proj", "blocks.0.mlp_channels.fc2"]),
])
def test_vision_mlp_names(name, mlps):
    names = dict(ZOO[name].build().module.named_modules())
    assert all(m in names for m in mlps)


def test_mixer_token_mlp_mixes_across_patches():
    model = ZOO["mixer-tiny"].build().module
    block = model.blocks[0]
    assert block.mlp_tokens.fc1.in_features == model.stem.num_patches == 64
    x = torch.zeros(1, 64, model.config.dim)
    x[0, 3] = 1.0  # one patch non-zero
    with torch.no_grad():
        mixed = block.mlp_tokens(block.norm1(x).transpose(1, 2)).transpose(1, 2)
    assert (mixed[0, 10] - mixed[0, 11]).abs().max() > 0  # other patches see it, each differently


def test_gmlp_spatial_gate_starts_as_identity_gating():
    model = ZOO["gmlp-tiny"].build().module
    gate = model.blocks[0].mlp_channels.gate
    assert torch.allclose(gate.proj.bias, torch.ones_like(gate.proj.bias))
    assert gate.proj.weight.abs().max() < 1e-4
    x = torch.randn(2, 64, model.config.ffn_dim)
    with torch.no_grad():
        u = x[..., : model.config.ffn_dim // 2]
        torch.testing.assert_close(gate(x), u, atol=1e-3, rtol=1e-3)
