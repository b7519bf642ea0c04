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

`ragged_cached_attention` is the ragged mode (input token_rows): `cached_attention` of each segment's row alone.
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


def ragged_segments(token_rows: torch.Tensor, position_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """The segments of a ragged call as (cache row, first token, token count): the maximal runs of tokens t of one row
    (token_rows[t]) at consecutive positions (position_ids[0, t] increasing by 1), in token order."""
    rows, positions = [int(r) for r in token_rows.reshape(-1)], [int(p) for p in position_ids.reshape(-1)]
    segments: list[tuple[int, int, int]] = []
    for t, (row, position) in enumerate(zip(rows, positions)):
        if t and row == rows[t - 1] and position == positions[t - 1] + 1:
            segments[-1] = (row, segments[-1][1], segments[-1][2] + 1)
        else:
            segments.append((row, t, 1))
    return segments


def ragged_cached_attention(query: torch.Tensor, past_key: torch.Tensor, past_value: torch.Tensor, cos_cache: torch.Tensor,
                            sin_cache: torch.Tensor, position_ids: torch.Tensor, token_rows: torch.Tensor, *, num_heads: int,
                            kv_num_heads: int, scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ragged mode (token_rows given): (output [1, T, H·D], present_key, present_value [R, KV, C, D]), float32.

    query [1, T, (H + 2·KV)·D] holds T tokens of rows token_rows[t] of the past [R, KV, C, D], at positions
    position_ids [1, T]. Each segment (`ragged_segments`: row r, first position p0, n tokens; each row in one
    segment at most) is `cached_attention` of its row alone: query = its n tokens, past = row r, position_ids
    p0 .. p0 + n − 1, seqlens_k = [p0 + n − 1], query_seqlens = [n]. Its keys and values land at columns
    p0 .. p0 + n − 1 of row r; every other column of present keeps the past's values."""
    _, T, _ = query.shape
    R, C = past_key.shape[0], past_key.shape[2]
    D = past_key.shape[3]
    out = torch.zeros(1, T, num_heads * D, dtype=torch.float32)
    present_k, present_v = past_key.to(torch.float32).clone(), past_value.to(torch.float32).clone()
    seen: set[int] = set()
    for row, first, count in ragged_segments(token_rows, position_ids):
        start = int(position_ids[0, first])
        if not 0 <= row < R or row in seen or start < 0 or start + count > C or start + count > cos_cache.shape[0]:
            raise ValueError(f"segment of row {row} at positions {start}..{start + count - 1}: not one the kernel takes "
                             f"(rows 0..{R - 1}, each once; positions 0..{min(C, cos_cache.shape[0]) - 1})")
        seen.add(row)
        length = start + count
        o, k, v = cached_attention(query[:, first : first + count], past_key[row : row + 1], past_value[row : row + 1],
                                   torch.tensor([length - 1], dtype=torch.int32), length, cos_cache, sin_cache,
                                   position_ids[:, first : first + count], None, torch.tensor([count], dtype=torch.int32),
                                   num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale)
        out[:, first : first + count] = o
        present_k[row, :, start:length] = k[0, :, start:length]
        present_v[row, :, start:length] = v[0, :, start:length]
    return out, present_k, present_v
