"""ort-decoder: a --kv-cache decoder's attention as one GroupQueryAttention (rotary inside) with the
model's own positions and mask, norms fused, q/k/v packed — equal to the exported graph on every
real (non-padding) position, for prefill, decode and left-padded batches."""

from __future__ import annotations

import collections

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from mlpdeploy.backends import get_backend
from mlpdeploy.backends.onnxruntime import OrtOptions
from mlpdeploy.export import export_model
from mlpdeploy.model import load_model
from mlpdeploy.model.kv_cache import with_kv_cache
from mlpdeploy.onnx_io import load_ir, save_onnx
from mlpdeploy.passes import PassSpec, run_pipeline


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    done = {}

    def get(name):
        if name not in done:
            done[name] = export_model(with_kv_cache(load_model(name)), tmp_path_factory.mktemp("ortdec") / f"{name}.onnx")
        return done[name]

    return get


def _fuse(path, out):
    model = load_ir(path)
    report = run_pipeline(model, [PassSpec("ort-decoder", {"max_positions": 128})])[0]
    save_onnx(model, out)
    return model, report


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _feed(session, batch, seq, past, pad, rng, positions="counted"):
    """Inputs for one run; positions "counted" (from the mask, as generation does), "offset" (each row
    continues from its own later start) or "scattered" (increasing, with gaps: any position_ids)."""
    kv = [i for i in session.get_inputs() if i.name.startswith("past_key_values")]
    mask = np.ones((batch, past + seq), np.int64)
    mask[0, :pad] = 0
    position_ids = np.maximum(mask.cumsum(-1) - 1, 0)[:, -seq:]
    if positions == "offset":
        position_ids = position_ids + rng.integers(1, 60, (batch, 1))
    elif positions == "scattered":
        position_ids = np.sort(rng.choice(120, (batch, seq), replace=True), axis=-1)
    feed = {"input_ids": rng.integers(0, 256, (batch, seq)).astype(np.int64), "attention_mask": mask, "position_ids": position_ids}
    for spec in kv:
        feed[spec.name] = rng.standard_normal((batch, spec.shape[1], past, spec.shape[3])).astype(np.float32)
    return feed


CASES = [(1, 7, 0, 0), (1, 1, 9, 0), (3, 4, 5, 0), (3, 6, 0, 2), (2, 1, 8, 3), (2, 3, 4, 1)]  # batch, seq, past, left pad of row 0
POSITIONS = ["counted", "offset", "scattered"]


@pytest.mark.parametrize("name, rotary, mlp_linears", [("llama-tiny", True, 3), ("opt-relu-tiny", False, 2)])
def test_fused_graph_equals_the_export(exported, tmp_path, name, rotary, mlp_linears):
    result = exported(name)
    fused, report = _fuse(result.model_path, tmp_path / "fused.onnx")
    layers = len(result.manifest.cache["layers"])
    counts = collections.Counter(n.op_type for n in fused.graph)
    assert report["skipped"] == {} and report["fusions"]["GroupQueryAttention"] == counts["GroupQueryAttention"] == layers
    assert report["fusions"]["packed QKV"] == layers and counts["RotaryEmbedding"] == 0 and counts["Split"] == 0
    assert report["fusions"]["rotary inside GroupQueryAttention"] == (layers if rotary else 0)
    gqas = [n for n in fused.graph if n.op_type == "GroupQueryAttention"]
    assert all(n.inputs[1] is None and n.inputs[2] is None for n in gqas)  # packed q, k, v as the query
    assert {n.attributes.get_int("do_rotary", 0) for n in gqas} == {int(rotary)}
    assert report["fusions"]["compact attention mask"] == 1  # the exported mask subgraph proved plain causal + padding
    assert report["shared_cache_buffer"]  # only GroupQueryAttention reads the cache: it may be one buffer
    assert {u.node.op_type for v in fused.graph.inputs if v.name.startswith("past_") for u in v.uses()} == {"GroupQueryAttention"}
    assert not any(n.domain.startswith("ai.onnxruntime._fusion") for n in fused.graph)
    assert counts["Softmax"] == 0 and counts["MatMul"] == layers * (2 + mlp_linears) + 1  # qkv, o and the MLP's per layer, lm head
    plain, ours = _session(result.model_path), _session(tmp_path / "fused.onnx")
    rng = np.random.default_rng(0)
    for (batch, seq, past, pad), positions in [(case, p) for case in CASES for p in POSITIONS]:
        feed = _feed(plain, batch, seq, past, pad, rng, positions)
        want, got = plain.run(None, feed), ours.run(None, feed)
        # what padding tokens compute (their logits, and the cache entries of later layers, which
        # depend on earlier layers' fully masked rows) is unspecified: compare real tokens only
        keep = feed["attention_mask"].astype(bool)
        np.testing.assert_allclose(got[0][keep[:, -seq:]], want[0][keep[:, -seq:]], atol=2e-5, rtol=1e-4)
        for g, w in zip(got[1:], want[1:]):  # presents [batch, heads, past + seq, head_dim]
            np.testing.assert_allclose(g.transpose(0, 2, 1, 3)[keep], w.transpose(0, 2, 1, 3)[keep], atol=2e-5, rtol=1e-4)


def test_a_layer_that_does_not_match_keeps_every_attention_as_exported(exported, tmp_path):
    """All or nothing: a second layer whose attention scales its cached keys (an extra op the rule does not know)."""
    model = load_ir(exported("llama-tiny").model_path)
    concat = next(n for n in model.graph if n.outputs[0].name == "present.1.key")
    scale = ir.Value(name="scale", const_value=ir.tensor(np.array(1.5, np.float32), name="scale"), shape=ir.Shape([]),
                     type=ir.TensorType(ir.DataType.FLOAT))
    model.graph.register_initializer(scale)
    readers = [u for u in concat.outputs[0].uses()]
    mul = ir.node("Mul", [concat.outputs[0], scale], name="extra")
    model.graph.insert_after(concat, mul)
    for use in readers:
        use.node.replace_input_with(use.idx, mul.outputs[0])
    save_onnx(model, tmp_path / "odd.onnx")
    fused, report = _fuse(tmp_path / "odd.onnx", tmp_path / "odd.fused.onnx")
    assert report["skipped"] == {"attention": "1 of 2 cached layers matched the attention pattern; unfused RotaryEmbedding, SDPA remain"}
    assert "GroupQueryAttention" not in {n.op_type for n in fused.graph} and report["fusions"]["SkipSimplifiedLayerNormalization"] == 4
    feed = _feed(_session(tmp_path / "odd.onnx"), 1, 3, 2, 0, np.random.default_rng(1))
    np.testing.assert_allclose(_session(tmp_path / "odd.fused.onnx").run(None, feed)[0], _session(tmp_path / "odd.onnx").run(None, feed)[0], atol=2e-5)


def test_graph_without_a_cache_is_left_with_norms_only(tmp_path):
    path = export_model(load_model("llama-tiny"), tmp_path / "plain.onnx").model_path
    fused, report = _fuse(path, tmp_path / "plain.fused.onnx")
    assert report["skipped"] == {"attention": "the graph has no past_key_values inputs (export it with --kv-cache)"}
    assert report["fusions"]["SkipSimplifiedLayerNormalization"] == 4


def test_backend_fuses_cached_decoders_by_default(exported, tmp_path):
    path = exported("llama-tiny").model_path
    backend = get_backend("onnxruntime")
    built = backend.build(path, tmp_path / "m.ort.onnx", OrtOptions(device="cpu"))
    assert built.info["fusions"]["fusions"]["GroupQueryAttention"] == 2
    assert "GroupQueryAttention" in {n.op_type for n in load_ir(tmp_path / "m.ort.onnx").graph}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["genai_config.json", "m.ort.manifest.json", "m.ort.onnx", "m.ort.session.json"]
    plain = backend.build(path, tmp_path / "p.ort.onnx", OrtOptions(device="cpu", fusions=False))
    assert "fusions" not in plain.info and "GroupQueryAttention" not in {n.op_type for n in load_ir(tmp_path / "p.ort.onnx").graph}


@pytest.mark.parametrize("level", [0, 4])
def test_quantized_decoder_packs_gate_and_up(exported, tmp_path, level):
    """After quantize-weights, each layer keeps one MatMulNBits for q/k/v, o, gate+up and down; the
    packed graph computes what the quantized export does (same codes, same int8 input blocks)."""
    model = load_ir(exported("llama-tiny").model_path)
    run_pipeline(model, [PassSpec("quantize-weights", {"format": "int4", "accuracy_level": str(level)})])
    save_onnx(model, tmp_path / "q.onnx")
    fused, report = _fuse(tmp_path / "q.onnx", tmp_path / "q.fused.onnx")
    layers = 2
    counts = collections.Counter(n.op_type for n in fused.graph)
    assert report["fusions"]["packed MatMulNBits siblings"] == layers
    assert counts["MatMulNBits"] == 4 * layers + 1 and counts["Split"] == layers  # + lm head; a Split per gate/up
    plain, ours = _session(tmp_path / "q.onnx"), _session(tmp_path / "q.fused.onnx")
    rng = np.random.default_rng(3)
    for batch, seq, past, pad in CASES:
        feed = _feed(plain, batch, seq, past, pad, rng)
        keep = feed["attention_mask"].astype(bool)[:, -seq:]
        np.testing.assert_allclose(ours.run(None, feed)[0][keep], plain.run(None, feed)[0][keep], atol=2e-5, rtol=1e-4)
