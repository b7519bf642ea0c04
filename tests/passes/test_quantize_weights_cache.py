"""quantize-weights on --kv-cache decoders: the quantized cached graph computes what the torch
reference with the same quantized weights computes (cache outputs included), and ort-decoder then
packs each layer's quantized q/k/v into one MatMulNBits without changing the result."""

from __future__ import annotations

import collections

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mlpdeploy.export import export_model
from mlpdeploy.model import load_model
from mlpdeploy.model.kv_cache import with_kv_cache
from mlpdeploy.onnx_io import load_ir, save_onnx
from mlpdeploy.passes import PassSpec, run_pipeline
from mlpdeploy.passes.quantize_weights import quantized_sites
from mlpdeploy.quant import quantized_sites_copy

INT4_EXACT = PassSpec("quantize-weights", {"format": "int4", "accuracy_level": 0})


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    bundle = with_kv_cache(load_model("llama-tiny"))
    return bundle, export_model(bundle, tmp_path_factory.mktemp("qcache") / "llama.onnx")


def _feed(session, batch, seq, past, rng):
    feed = {"input_ids": rng.integers(0, 256, (batch, seq)).astype(np.int64), "attention_mask": np.ones((batch, past + seq), np.int64),
            "position_ids": np.tile(np.arange(past, past + seq), (batch, 1)).astype(np.int64)}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values"):
            feed[spec.name] = rng.standard_normal((batch, spec.shape[1], past, spec.shape[3])).astype(np.float32)
    return feed


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_quantized_cache_graph_matches_the_quantized_torch_decoder(cached, tmp_path):
    bundle, exported = cached
    model = load_ir(exported.model_path)
    reports = run_pipeline(model, [INT4_EXACT])
    sites = quantized_sites(reports[0])
    assert len(sites) == 15 and not any(s.int8_block for s in sites)
    save_onnx(model, tmp_path / "q.onnx")
    session = _session(tmp_path / "q.onnx")
    reference = quantized_sites_copy(bundle.module, sites)
    names = [i.name for i in session.get_inputs()]
    for batch, seq, past in [(1, 1, 7), (2, 5, 0), (1, 3, 4)]:
        feed = _feed(session, batch, seq, past, np.random.default_rng(seq + past))
        outputs = session.run(None, feed)
        with torch.no_grad():
            expected = reference(*[torch.from_numpy(feed[n]) for n in names])
        for _ in range(2):  # (logits, [(key, value), ...]) flattened
            expected = [t for item in expected for t in (item if isinstance(item, (list, tuple)) else [item])]
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            np.testing.assert_allclose(got, want.numpy(), atol=2e-5 * max(1.0, float(want.abs().max())), rtol=0)


@pytest.mark.slow
def test_ort_decoder_packs_quantized_qkv(cached, tmp_path):
    _, exported = cached
    plain = load_ir(exported.model_path)
    run_pipeline(plain, [INT4_EXACT])
    fused = load_ir(exported.model_path)
    reports = run_pipeline(fused, [INT4_EXACT, PassSpec("ort-decoder", {"max_positions": 128})])
    counts = collections.Counter(n.op_type for n in fused.graph)
    # per layer: one packed QKV, o_proj, gate, up, down; plus lm_head
    assert counts["MatMulNBits"] == 2 * 5 + 1 and counts["GroupQueryAttention"] == 2 and counts["MatMul"] == 0
    packed = [n for n in fused.graph if n.op_type == "MatMulNBits" and n.attributes["N"].value == 64 + 2 * 32]
    assert len(packed) == 2, reports
    save_onnx(plain, tmp_path / "plain.onnx")
    save_onnx(fused, tmp_path / "fused.onnx")
    a, b = _session(tmp_path / "plain.onnx"), _session(tmp_path / "fused.onnx")
    feed = _feed(a, 1, 4, 6, np.random.default_rng(0))
    for x, y in zip(a.run(None, feed), b.run(None, feed)):
        np.testing.assert_allclose(y, x, atol=1e-4, rtol=1e-4)
