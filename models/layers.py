"""Building blocks shared by the zoo's architectures: norms, rotary embedding, attention,
MLPs and patch embedding. Module names follow Hugging Face / timm so scopes in the exported
graph read like the models users know (`mlp.gate_proj`, `fc1`, `mlp.fc2`, …)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """`x / sqrt(mean(x²) + eps) · weight` over the last dim (LLaMA's norm)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class RotaryEmbedding(nn.Module):
    """RoPE angles (rotate-half layout), computed from positions as Hugging Face LLaMA does:
    `angles = position · inv_freq`, duplicated over the two halves; ONNX Runtime's fusions
    (RotaryEmbedding, GroupQueryAttention) recognize exactly this form."""

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0):
        super().__init__()
        self.max_positions = max_positions
        # Derived from the config, so not part of the checkpoint.
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        angles = positions.float()[..., None] * self.inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [seq, head_dim] for positions 0..seq_len-1."""
        return self._tables(torch.arange(seq_len, device=self.inv_freq.device))

    def at(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin at `position_ids` [batch, seq], shaped [batch, 1, seq, head_dim] to broadcast over heads."""
        cos, sin = self._tables(position_ids)
        return cos.unsqueeze(1), sin.unsqueeze(1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [batch, heads, seq, head_dim] by position tables that broadcast to it."""
    return x * cos + rotate_half(x) * sin


def decoder_mask(attention_mask: torch.Tensor, seq_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention mask [batch, 1, seq, past+seq] for a decode step with a cache.

    Query i sits at position past+i and sees key j when j <= past+i (causal) and
    attention_mask[b, j] is 1 (not padding). Blocked entries hold the dtype's minimum, not -inf,
    so a fully padded query row gives finite (ignored) values instead of NaN.
    """
    total = attention_mask.shape[-1]
    past = total - seq_len
    query_pos = torch.arange(seq_len, device=attention_mask.device) + past
    key_pos = torch.arange(total, device=attention_mask.device)
    allowed = (key_pos[None, :] <= query_pos[:, None])[None, None] & attention_mask[:, None, None, :].bool()
    return torch.zeros((), dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


class Attention(nn.Module):
    """Multi-head (grouped-query when n_kv_heads < n_heads) attention via SDPA.

    `out_name` names the output projection (`o_proj` in LLaMA, `out_proj` in OPT, `proj` in ViT).
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int | None = None, bias: bool = False,
                 causal: bool = True, out_name: str = "o_proj"):
        super().__init__()
        n_kv_heads = n_kv_heads or n_heads
        if dim % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"dim {dim}, heads {n_heads}, kv heads {n_kv_heads} do not divide")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.causal, self.out_name = causal, out_name
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=bias)
        setattr(self, out_name, nn.Linear(n_heads * self.head_dim, dim, bias=bias))

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, n, self.head_dim).transpose(1, 2)

    def _repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        rep = self.n_heads // self.n_kv_heads
        if rep == 1:
            return x
        b, kv, s, hd = x.shape
        return x[:, :, None].expand(b, kv, rep, s, hd).reshape(b, kv * rep, s, hd)

    def _project(self, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q = self._heads(self.q_proj(x), self.n_heads)
        k = self._heads(self.k_proj(x), self.n_kv_heads)
        v = self._heads(self.v_proj(x), self.n_kv_heads)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        return q, k, v

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        b, _, s, _ = out.shape
        return getattr(self, self.out_name)(out.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None, cache=None):
        """Attention over `x`; with `cache` = (past_k, past_v, mask), one cached step (see `step`).

        Cached steps go through here (the module's `__call__`), so forward hooks see them and the
        exporter records this module's scope on their nodes, as on uncached ones.
        """
        if cache is not None:
            return self.step(x, rope, *cache)
        q, k, v = self._project(x, rope)
        return self._output(F.scaled_dot_product_attention(q, self._repeat_kv(k), self._repeat_kv(v), is_causal=self.causal))

    def step(self, x: torch.Tensor, rope, past_k: torch.Tensor, past_v: torch.Tensor, mask: torch.Tensor):
        """One cached step: attend over `past` [batch, kv_heads, past, head_dim] plus this step's keys.

        Returns (output, keys, values), the keys and values being past + this step's (the present).
        """
        q, k, v = self._project(x, rope)
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        out = F.scaled_dot_product_attention(q, self._repeat_kv(k), self._repeat_kv(v), attn_mask=mask)
        return self._output(out), k, v


class SwiGLU(nn.Module):
    """`down_proj(silu(gate_proj(x)) ⊙ up_proj(x))` (LLaMA's gated MLP)."""

    def __init__(self, dim: int, hidden: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Mlp(nn.Module):
    """`fc2(act(fc1(x)))` (ViT / Mixer MLP)."""

    def __init__(self, dim: int, hidden: int, out: int | None = None, act: type[nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a strided Conv2d: [B, C, H, W] → [B, (H/p)(W/p), dim]."""

    def __init__(self, image_size: int, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of patch size {patch_size}")
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """GPT-style init for training: linear/embedding weights N(0, std), biases zero, norms one.

    The random-weight zoo builders keep PyTorch's default init instead (activations of order
    one, so numerics checks on them mean something); training scripts call this first.
    """
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
