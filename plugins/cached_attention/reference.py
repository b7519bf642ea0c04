"""CachedAttention semantics as a torch function: the oracle the CPU kernel (ort_kernel.c) is tested against.

For each row b of the batch: L = seqlens_k[b] + 1 tokens are cached after the step, Q =
query_seqlens[b] (default min(S, L)) rows of the chunk are valid and P = L − Q were cached before.
present_key / present_value are [B, KV, max(C, T), D]: the past's first P columns of the row, the
chunk's Q keys (rotated) and values at columns P .. L − 1, zeros elsewhere (with IO binding present
is the past buffer itself and the other columns keep what they held). Query row s < Q of head h
(at position_ids[b, s], kv head h // (H / KV)) attends columns 0 .. P + s of its row:

    score[c] = scale · rot(q)·k[c] + attention_bias[b, h, s, c]      (bias broadcast over batch / heads of 1)
    out[b, s, h] = Σ_c softmax(score)[c] · v[c]

A bias of −FLT_MAX (float32's lowest, or −inf) masks its column out and a query with every column
masked gets 0, as ONNX Runtime 1.32's GroupQueryAttention does (measured; −1e30 is a finite score).

rot is rotate-half: y[i] = x[i]·cos[p, i] − x[i + D/2]·sin[p, i], y[i + D/2] = x[i + D/2]·cos[p, i] +
x[i]·sin[p, i]. Rows s ≥ Q of the output are 0. The reference computes in float64; the kernel in
float32 (rotation as float32 products, then FMA dot products, a polynomial exp, FMA accumulation),
so they agree to ~1e-6 of the values' magnitude.
"""

from __future__ import annotations

import torch


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half rotary embedding of x [..., D] by cos / sin [..., D/2]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def cached_attention(query: torch.Tensor, past_key: torch.Tensor, past_value: torch.Tensor, seqlens_k: torch.Tensor,
                     total_sequence_length: int, cos_cache: torch.Tensor, sin_cache: torch.Tensor, position_ids: torch.Tensor,
                     attention_bias: torch.Tensor | None = None, query_seqlens: torch.Tensor | None = None, *, num_heads: int,
                     kv_num_heads: int, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output [B, S, H·D], present_key, present_value [B, KV, max(C, T), D]), float32 (see the module docstring)."""
    B, S, _ = query.shape
    KV, C, D = past_key.shape[1], past_key.shape[2], past_key.shape[3]
    H, group = num_heads, num_heads // kv_num_heads
    scale = scale or D ** -0.5
    T = int(total_sequence_length)
    capacity = max(C, T)
    qkv = query.to(torch.float64).reshape(B, S, H + 2 * KV, D)
    present_k = torch.zeros(B, KV, capacity, D, dtype=torch.float64)
    present_v = torch.zeros(B, KV, capacity, D, dtype=torch.float64)
    out = torch.zeros(B, S, H, D, dtype=torch.float64)
    for b in range(B):
        length = int(seqlens_k[b]) + 1
        valid = int(query_seqlens[b]) if query_seqlens is not None else min(S, length)
        past = length - valid
        present_k[b, :, :past] = past_key[b, :, :past].to(torch.float64)
        present_v[b, :, :past] = past_value[b, :, :past].to(torch.float64)
        positions = position_ids[b, :valid].long()
        # the rotation in float32, as the kernel rotates (its products are float32 ones)
        cos, sin = cos_cache[positions].to(torch.float32), sin_cache[positions].to(torch.float32)      # [Q, D/2]
        chunk = query[b, :valid].to(torch.float32).reshape(valid, H + 2 * KV, D)
        q = rotate(chunk[:, :H], cos[:, None], sin[:, None]).to(torch.float64)                          # [Q, H, D]
        k = rotate(chunk[:, H : H + KV], cos[:, None], sin[:, None]).to(torch.float64)                  # [Q, KV, D]
        present_k[b, :, past:length] = k.transpose(0, 1)
        present_v[b, :, past:length] = qkv[b, :valid, H + KV :].transpose(0, 1)
        keys = present_k[b, :, :length].repeat_interleave(group, dim=0)                                # [H, L, D]
        values = present_v[b, :, :length].repeat_interleave(group, dim=0)
        scores = scale * torch.einsum("shd,hcd->hsc", q, keys)                                          # [H, Q, L]
        masked = torch.arange(length)[None, :] > (past + torch.arange(valid))[:, None]                  # [Q, L] causal
        if attention_bias is not None:
            bias = attention_bias[b if attention_bias.shape[0] > 1 else 0][:, :valid, :length]          # [H or 1, Q, L]
            scores = scores + bias.to(torch.float64)
            masked = masked | (bias <= torch.finfo(torch.float32).min)                                   # -FLT_MAX masks
        scores = scores.masked_fill(masked, float("-inf"))
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)                                          # nothing kept: 0
        out[b, :valid] = torch.einsum("hsc,hcd->shd", weights, values)
    return out.reshape(B, S, H * D).to(torch.float32), present_k.to(torch.float32), present_v.to(torch.float32)
