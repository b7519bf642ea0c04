"""Decoders exported with their KV cache: one graph for prefill (past 0) and decode, the names and
layouts Optimum and onnxruntime-genai use, and the numbers of the uncached torch model."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.export import export_model
from mlpdeploy.model import load_model
from mlpdeploy.model.inputs import check_inputs, generate_inputs
from mlpdeploy.model.kv_cache import TOTAL, with_kv_cache

DECODERS = ["llama-tiny", "opt-relu-tiny"]


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    done = {}

    def get(name):
        if name not in done:
            bundle = with_kv_cache(load_model(name))
            result = export_model(bundle, tmp_path_factory.mktemp("kv") / f"{name}.onnx")
            done[name] = (bundle, result, ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"]))
        return done[name]

    return get


def _feed(layout, ids, mask, past):
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": np.maximum(mask.cumsum(-1) - 1, 0)[:, -ids.shape[1]:]}
    for layer, (k, v) in zip(layout.layers, past):
        feed.update(zip(layout.input_names(layer), (k, v)))
    return feed


def _run(session, layout, ids, mask, past):
    out = session.run(None, _feed(layout, ids, mask, past))
    return out[0], [(out[1 + 2 * i], out[2 + 2 * i]) for i in range(len(layout.layers))]


def _empty(layout, batch):
    empty = np.zeros((batch, layout.kv_heads, 0, layout.head_dim), np.float32)
    return [(empty, empty) for _ in layout.layers]


@pytest.mark.parametrize("name", DECODERS)
def test_interface_and_manifest(cached, name):
    bundle, result, session = cached(name)
    layout = bundle.cache
    names = [i.name for i in session.get_inputs()]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:] == [n for layer in layout.layers for n in (f"past_key_values.{layer}.key", f"past_key_values.{layer}.value")]
    assert [o.name for o in session.get_outputs()] == ["logits", *[n for i in layout.layers for n in (f"present.{i}.key", f"present.{i}.value")]]
    past = session.get_inputs()[3].shape
    assert past[1] == layout.kv_heads and past[3] == layout.head_dim and isinstance(past[2], str)
    assert result.manifest.cache == layout.to_json() and result.manifest.cache["layers"] == [0, 1]
    assert result.manifest.dims["past"][0] == 0 and result.manifest.input("attention_mask").shape == ["batch", TOTAL]


def test_grouped_query_attention_keeps_its_smaller_cache(cached):
    bundle, _, session = cached("llama-tiny")
    config = load_model("llama-tiny").module.config
    assert bundle.cache.kv_heads == config.n_kv_heads == 2 < config.n_heads
    assert session.get_inputs()[3].shape[1] == 2


@pytest.mark.parametrize("name", DECODERS)
def test_cached_logits_match_uncached_at_every_position(cached, name):
    """Prefill of 7 tokens with an empty cache, then 6 single-token steps: every position's
    logits equal the uncached torch model's on the whole sequence."""
    bundle, _, session = cached(name)
    model = load_model(name).module
    ids = torch.randint(0, 256, (1, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).numpy()
    ids = ids.numpy()
    logits, past = _run(session, bundle.cache, ids[:, :7], np.ones((1, 7), np.int64), _empty(bundle.cache, 1))
    errors = [np.abs(logits - full[:, :7]).max()]
    for step in range(7, 13):
        logits, past = _run(session, bundle.cache, ids[:, step:step + 1], np.ones((1, step + 1), np.int64), past)
        errors.append(np.abs(logits[:, 0] - full[:, step]).max())
    assert max(errors) < 1e-5, errors
    assert past[0][0].shape[2] == 13


@pytest.mark.parametrize("name", DECODERS)
def test_batch_with_left_padding(cached, name):
    """Three prompts of lengths 9, 4 and 1, left-padded into one batch, then two steps: each row
    matches its prompt run alone (uncached torch)."""
    bundle, _, session = cached(name)
    model = load_model(name).module
    rng = np.random.default_rng(2)
    prompts = [rng.integers(0, 256, n) for n in (9, 4, 1)]
    nexts = rng.integers(0, 256, (3, 2))
    ids = np.zeros((3, 9), np.int64)
    mask = np.zeros((3, 9), np.int64)
    for row, p in enumerate(prompts):
        ids[row, 9 - len(p):], mask[row, 9 - len(p):] = p, 1
    logits, past = _run(session, bundle.cache, ids, mask, _empty(bundle.cache, 3))
    last = [logits[:, -1]]
    for step in range(2):
        mask = np.concatenate([mask, np.ones((3, 1), np.int64)], 1)
        logits, past = _run(session, bundle.cache, nexts[:, step:step + 1], mask, past)
        last.append(logits[:, 0])
    for row, p in enumerate(prompts):
        with torch.no_grad():
            alone = model(torch.from_numpy(np.concatenate([p, nexts[row]])[None])).numpy()[0]
        for k, got in enumerate(last):
            np.testing.assert_allclose(got[row], alone[len(p) - 1 + k], atol=2e-5, rtol=1e-4)


def test_generated_inputs_keep_the_sum_dim_consistent(cached):
    bundle, result, _ = cached("llama-tiny")
    feed = generate_inputs(result.manifest.inputs, dims={"seq": 4, "past": 6})
    assert feed["attention_mask"].shape == (2, 10) and feed["past_key_values.1.value"].shape == (2, 2, 6, 16)
    check_inputs(feed, result.manifest.inputs, result.manifest.dims, "test")
    feed["attention_mask"] = feed["attention_mask"][:, :9]
    with pytest.raises(MlpdeployError, match=r"dim past\+seq is 9, but it must equal past=6 \+ seq=4 = 10"):
        check_inputs(feed, result.manifest.inputs, result.manifest.dims, "test")


def test_not_a_decoder_is_refused():
    with pytest.raises(MlpdeployError, match="vit-tiny is not a decoder with a KV cache mlpdeploy can drive"):
        with_kv_cache(load_model("vit-tiny"))


def test_module_paths_match_the_uncached_model():
    bundle = with_kv_cache(load_model("llama-tiny"))
    plain = load_model("llama-tiny")
    assert {n for n, _ in bundle.module.named_modules() if n} == {n for n, _ in plain.module.named_modules() if n}
    assert set(bundle.module.state_dict()) == set(plain.module.state_dict())
