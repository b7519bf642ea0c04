"""The built decoder (GroupQueryAttention rotating q and k at the graph's position_ids) against torch on a
real model (SmolLM2's first 4 layers): batch 1 prefill and decode, left-padded batches, and
position_ids that no mask implies (each row offset, or increasing with gaps) — every real
position's logits and cache entries equal torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlpdeploy.model import load_model
from mlpdeploy.model.kv_cache import with_kv_cache
from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator

ATOL, RTOL = 2e-4, 1e-4  # float32, 4 layers: ONNX Runtime's fused kernels vs torch eager


@pytest.fixture(scope="module")
def pair(smollm2_small, smollm2_small_kv):
    engine = Engine.load(smollm2_small_kv)
    assert {n.op_type for n in _graph_nodes(engine)} >= {"GroupQueryAttention"}
    assert "RotaryEmbedding" not in {n.op_type for n in _graph_nodes(engine)}  # rotated inside the attention
    return engine, with_kv_cache(load_model(str(smollm2_small))).module


def _graph_nodes(engine: Engine):
    import onnx

    return onnx.load(str(engine.path), load_external_data=False).graph.node


def _run_both(engine, module, ids, mask, positions, past):
    """Logits and presents of the built graph and of torch for the same inputs (past: numpy arrays)."""
    layout = engine.cache
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    names = [n for layer in layout.layers for n in layout.input_names(layer)]
    feed.update(zip(names, past))
    got = engine.session.run(None, feed)
    with torch.no_grad():
        want = module(*(torch.from_numpy(a) for a in (ids, mask, positions, *past)))
    return got, [t.numpy() for t in want]


def _check(got, want, mask, seq):
    real = mask.astype(bool)
    np.testing.assert_allclose(got[0][real[:, -seq:]], want[0][real[:, -seq:]], atol=ATOL, rtol=RTOL)
    for g, w in zip(got[1:], want[1:]):  # [batch, kv_heads, past + seq, head_dim]: real positions only
        np.testing.assert_allclose(g.transpose(0, 2, 1, 3)[real], w.transpose(0, 2, 1, 3)[real], atol=ATOL, rtol=RTOL)


def _empty(engine, batch):
    layout = engine.cache
    return [np.zeros((batch, layout.kv_heads, 0, layout.head_dim), np.float32)] * (2 * len(layout.layers))


@pytest.mark.parametrize("lengths", [[9], [9, 4, 1]], ids=["batch 1", "left-padded batch"])
def test_prefill_and_decode_steps_equal_torch(pair, lengths):
    engine, module = pair
    rng = np.random.default_rng(0)
    longest = max(lengths)
    mask = np.zeros((len(lengths), longest), np.int64)
    for row, n in enumerate(lengths):
        mask[row, longest - n:] = 1
    ids = rng.integers(3, 40000, mask.shape).astype(np.int64)
    positions = np.maximum(mask.cumsum(-1) - 1, 0)
    got, want = _run_both(engine, module, ids, mask, positions, _empty(engine, len(lengths)))
    _check(got, want, mask, longest)
    past = got[1:]
    for _ in range(3):  # decode steps continue from the graph's own cache (torch gets the same cache)
        mask = np.concatenate([mask, np.ones((len(lengths), 1), np.int64)], axis=1)
        step = rng.integers(3, 40000, (len(lengths), 1)).astype(np.int64)
        positions = mask.sum(-1, keepdims=True) - 1
        got, want = _run_both(engine, module, step, mask, positions, past)
        _check(got, want, mask, 1)
        past = got[1:]


@pytest.mark.parametrize("kind", ["offset", "scattered"])
@pytest.mark.parametrize("seq, past_len", [(1, 6), (4, 0), (3, 5)])
def test_arbitrary_position_ids_equal_torch(pair, kind, seq, past_len):
    """position_ids the mask does not imply: rotary angles follow them, row by row."""
    engine, module = pair
    rng = np.random.default_rng(seq * 10 + past_len)
    batch = 2
    mask = np.ones((batch, past_len + seq), np.int64)
    mask[1, :1] = 0
    if kind == "offset":
        positions = np.arange(past_len, past_len + seq)[None] + np.array([[37], [500]])
    else:
        positions = np.sort(rng.choice(3000, (batch, seq), replace=False), axis=-1)
    layout = engine.cache
    past = [rng.standard_normal((batch, layout.kv_heads, past_len, layout.head_dim)).astype(np.float32)
            for _ in range(2 * len(layout.layers))]
    ids = rng.integers(3, 40000, (batch, seq)).astype(np.int64)
    got, want = _run_both(engine, module, ids, mask, positions.astype(np.int64), past)
    _check(got, want, mask, seq)


def test_generation_of_a_left_padded_batch_equals_each_prompt_alone(smollm2_small_kv):
    generator = CachedGenerator(Engine.load(smollm2_small_kv))
    prompts = [[1, 504, 2491, 314, 260, 3458], [1, 28], [1, 504, 2491, 314]]
    together = generator.generate(prompts, 6).tokens
    assert together == [generator.generate([p], 6).tokens[0] for p in prompts]
