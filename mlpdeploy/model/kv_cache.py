"""Decoders with a key/value cache: the contract a model meets, and the bundle mlpdeploy exports.

A *cached decoder* is a torch module with

    cache_layout() -> CacheLayout
    forward_cached(input_ids, attention_mask, position_ids, past) -> (logits, presents)

where `past` and `presents` are lists of (keys, values) per cached layer, each
[batch, kv_heads, length, head_dim], `attention_mask` is [batch, past + seq] (1 = a real token,
0 = padding, left padding for batches) and `position_ids` [batch, seq]. The zoo decoders meet
it; Hugging Face causal LMs are adapted by `mlpdeploy.model.hf.HFCachedDecoder`; a user's model
meets it by defining the two methods.

`with_kv_cache(bundle)` gives the bundle that is exported: one graph for prefill (past length
0) and decode, with the names and layouts Optimum and onnxruntime-genai use — inputs
`input_ids`, `attention_mask`, `position_ids`, `past_key_values.{i}.key|value`; outputs
`logits`, `present.{i}.key|value`.
"""

from __future__ import annotations

import numpy as np
import torch

from mlpdeploy.contract import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, numpy_dtype
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import InputSpec, ModelBundle, share_tree
from mlpdeploy.model.cache_layout import CacheLayout

EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST = 2, 3, 5  # never 0 or 1: torch.export would specialize them
TOTAL = "past+seq"  # the attention mask's length: a dim that is the sum of two others


def is_cached_decoder(module: torch.nn.Module) -> bool:
    return callable(getattr(module, "forward_cached", None)) and callable(getattr(module, "cache_layout", None))


class FlatCachedDecoder(torch.nn.Module):
    """`(input_ids, attention_mask, position_ids, *past) → (logits, *presents)`: the cached
    decoder with flat tensor arguments, as exporters and runtimes see it.

    The decoder's children, parameters and buffers are registered here under their own names,
    so module paths (`layers.3.mlp`) are the same as in the decoder without a cache: a plan
    made on one applies to the other, and per-layer validation finds the same layers.
    """

    def __init__(self, decoder: torch.nn.Module, layout: CacheLayout):
        super().__init__()
        object.__setattr__(self, "decoder", decoder)  # not a submodule: no `decoder.` prefix on paths
        share_tree(self, decoder)
        self.layout = layout

    def forward(self, input_ids, attention_mask, position_ids, *past):
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(self.layout.layers))]
        logits, presents = self.decoder.forward_cached(input_ids, attention_mask, position_ids, pairs)
        return (logits, *[t for pair in presents for t in pair])


def with_kv_cache(bundle: ModelBundle) -> ModelBundle:
    """The bundle of `bundle`'s model as a cached decoder (see the module docstring), or a one-line error."""
    decoder = bundle.module
    if not is_cached_decoder(decoder):
        raise MlpdeployError(
            f"{bundle.source} is not a decoder with a KV cache mlpdeploy can drive: --kv-cache needs a zoo decoder, a Hugging "
            "Face causal LM directory, or a module with cache_layout() and forward_cached(input_ids, attention_mask, "
            "position_ids, past) (see mlpdeploy.model.kv_cache)"
        )
    layout = decoder.cache_layout()
    vocab = _vocab(bundle)
    b, s, p = EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST
    gen = torch.Generator().manual_seed(0)
    dtype = getattr(torch, layout.dtype)
    example = {
        INPUT_IDS: torch.randint(0, vocab, (b, s), generator=gen),
        ATTENTION_MASK: torch.ones(b, p + s, dtype=torch.int64),
    }
    specs = [
        InputSpec(INPUT_IDS, "int64", ["batch", "seq"], [b, s], low=0, high=vocab),
        InputSpec(ATTENTION_MASK, "int64", ["batch", TOTAL], [b, p + s], fill=1),
    ]
    if layout.position_ids:
        example[POSITION_IDS] = torch.arange(p, p + s).expand(b, s).contiguous()
        specs.append(InputSpec(POSITION_IDS, "int64", ["batch", "seq"], [b, s], low=0, high=layout.max_positions - s))
    outputs = [LOGITS]
    for layer in layout.layers:
        for name in layout.input_names(layer):
            example[name] = torch.randn(b, layout.kv_heads, p, layout.head_dim, generator=gen, dtype=dtype)
            specs.append(InputSpec(name, layout.dtype, ["batch", layout.kv_heads, "past", layout.head_dim], [b, layout.kv_heads, p, layout.head_dim]))
        outputs.extend(layout.output_names(layer))
    module = FlatCachedDecoder(decoder, layout) if layout.position_ids else _WithoutPositions(decoder, layout)
    module.eval()
    return ModelBundle(
        module=module,
        example_inputs=example,
        inputs=specs,
        output_names=outputs,
        source=bundle.source,
        kind=bundle.kind,
        dim_ranges={"seq": (1, layout.max_positions), "past": (0, layout.max_positions - 1), TOTAL: (1, layout.max_positions)},
        task=bundle.task,
        trained=bundle.trained,
        cache=layout,
        metadata=dict(bundle.metadata),
    )


class _WithoutPositions(FlatCachedDecoder):
    """For decoders whose positions follow from the mask alone (no `position_ids` input)."""

    def forward(self, input_ids, attention_mask, *past):
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        return super().forward(input_ids, attention_mask, positions, *past)


def prefill_feed(input_ids: np.ndarray, layout: CacheLayout) -> dict[str, np.ndarray]:
    """The cached graph's feed that computes what the uncached model does on `input_ids`:
    no padding, positions 0..seq-1, an empty cache (past length 0)."""
    batch, seq = input_ids.shape
    feed = {INPUT_IDS: input_ids, ATTENTION_MASK: np.ones((batch, seq), np.int64)}
    if layout.position_ids:
        feed[POSITION_IDS] = np.broadcast_to(np.arange(seq, dtype=np.int64), (batch, seq)).copy()
    empty = np.zeros((batch, layout.kv_heads, 0, layout.head_dim), dtype=numpy_dtype(layout.dtype))
    for layer in layout.layers:
        for name in layout.input_names(layer):
            feed[name] = empty
    return feed


def _vocab(bundle: ModelBundle) -> int:
    ids = next((s for s in bundle.inputs if s.name == INPUT_IDS), None)
    if ids is None or ids.high is None:
        raise MlpdeployError(f"{bundle.source}: --kv-cache needs an input_ids input with a known vocabulary size")
    return int(ids.high)
