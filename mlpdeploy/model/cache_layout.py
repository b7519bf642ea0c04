"""CacheLayout: which layers of a cached decoder keep a KV cache, and its shape. A floor below
both `bundle` (a bundle carries one) and `kv_cache` (which builds the cached bundle)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mlpdeploy.contract import cache_input_names, cache_output_names


@dataclass
class CacheLayout:
    """Which layers keep a cache and its shape: [batch, kv_heads, length, head_dim] per layer."""

    layers: list[int]
    kv_heads: int
    head_dim: int
    max_positions: int
    position_ids: bool = True
    dtype: str = "float32"
    # Set by a build whose graph reads the cache only through GroupQueryAttention: the runtime may
    # bind one preallocated [batch, kv_heads, max length, head_dim] buffer per input as both the
    # past and the present, and ONNX Runtime appends to it in place.
    shared_buffer: bool = False
    # Set with shared_buffer by builds whose GroupQueryAttention takes each row's length from the
    # mask (its last 1): rows of one batch may hold different lengths, each in columns
    # 0..length-1 of its own buffer row, and compute exactly what they compute alone.
    row_lengths: bool = False

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "CacheLayout":
        return cls(**data)

    def input_names(self, layer: int) -> tuple[str, str]:
        return cache_input_names(layer)

    def output_names(self, layer: int) -> tuple[str, str]:
        return cache_output_names(layer)
