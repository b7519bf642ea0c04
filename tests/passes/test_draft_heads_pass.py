"""`draft-heads`: a plan's heads built into a cached decoder as outputs draft_logits.{j}, equal to the
torch heads (ONNX Runtime CPU, several shapes incl. batch 1 and odd lengths), quantized with the
model, validated; heads for another model and misuse refused in one line."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.draft_heads import DraftHeads, HeadsFile, attach_draft_heads, find_lm_head, lm_rows, rows_sha256
from mlpdeploy.model.kv_cache import prefill_feed
from mlpdeploy.model.manifest import find_manifest
from mlpdeploy.model.torch_run import run_module
from mlpdeploy.passes import PassSpec, reference_edits, rewrite_model
from mlpdeploy.validate import ValidateOptions, validate

SLICE = np.arange(3, 256, 2)[:101]  # an odd slice of the byte vocabulary


def heads_file(bundle, path, heads: int = 3, token_ids=SLICE, seed: int = 0):
    """Random (non-zero) heads for `bundle`'s model, written as analyze writes them."""
    _, lm_head = find_lm_head(bundle.module, 256)
    rows = lm_rows(lm_head, token_ids)
    module = DraftHeads(heads, torch.from_numpy(rows), token_ids)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.proj.weight.copy_(torch.randn(module.proj.weight.shape, generator=gen) * 0.2)
        module.proj.bias.copy_(torch.randn(module.proj.bias.shape, generator=gen) * 0.2)
    save_file(module.to_file(rows_sha256(rows)).arrays(), str(path))
    return path


@pytest.fixture(scope="module")
def llama_kv(zoo_export):
    return zoo_export("llama-small", kv_cache=True)


def _feed(bundle, batch: int, seq: int, past: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    layout = bundle.cache
    feed = prefill_feed(rng.integers(0, 256, (batch, seq)), layout)
    feed["attention_mask"] = np.ones((batch, past + seq), np.int64)
    feed["attention_mask"][0, :min(past, 2)] = 0  # left padding on the first row
    feed["position_ids"] = np.maximum(np.cumsum(feed["attention_mask"], 1) - 1, 0)[:, past:]
    for name in [n for n in feed if n.startswith("past_key_values")]:
        feed[name] = rng.standard_normal((batch, layout.kv_heads, past, layout.head_dim)).astype(np.float32)
    return feed


@pytest.mark.parametrize("heads,token_ids", [(3, SLICE), (1, np.arange(256))], ids=["slice101", "whole"])
def test_outputs_equal_the_torch_heads(llama_kv, tmp_path, h, heads, token_ids):
    bundle, path = llama_kv
    file = heads_file(bundle, tmp_path / "plan.draft-heads.safetensors", heads, token_ids)
    result = rewrite_model(path, tmp_path / "heads.onnx", [PassSpec("draft-heads", {"artifact": str(file)})])
    report = result.report("draft-heads")
    assert report["rewritten"] == 1 and report["outputs"] == [f"draft_logits.{j}" for j in range(heads)]
    manifest = find_manifest(result.model_path)
    assert manifest.draft_heads["heads"] == heads and manifest.outputs[-1]["shape"] == ["batch", "seq", len(token_ids)]
    assert manifest.draft_heads["token_ids"] == (None if len(token_ids) == 256 else [int(t) for t in token_ids])
    reference = attach_draft_heads(bundle, HeadsFile.read(file), str(file))
    session = h.session(h.checked(__import__("onnx_ir").load(result.model_path)))
    names = [o.name for o in session.get_outputs()]
    assert names == reference.output_names
    for i, (batch, seq, past) in enumerate([(1, 1, 0), (1, 7, 3), (3, 5, 2), (2, 1, 9)]):
        feed = _feed(bundle, batch, seq, past, i)
        got = session.run(None, feed)
        want = run_module(reference.module, feed, [s.name for s in reference.inputs])
        for name, a, b in zip(names, got, want):
            h.assert_close(a, b, f"{name} at {(batch, seq, past)}")
        heads_out = got[-heads:]
        assert all(o.shape == (batch, seq, len(token_ids)) for o in heads_out)
        assert not np.allclose(heads_out[0], got[0][..., token_ids], atol=1e-3)  # the heads are not the lm_head


def test_quantized_with_the_model_and_validated(llama_kv, tmp_path):
    bundle, path = llama_kv
    file = heads_file(bundle, tmp_path / "plan.draft-heads.safetensors")
    passes = [PassSpec("draft-heads", {"artifact": str(file)}), PassSpec("quantize-weights", {"format": "int4"})]
    result = rewrite_model(path, tmp_path / "q.onnx", passes)
    sites = result.report("quantize-weights")["sites"]
    assert {"draft_heads.proj", "draft_heads.lm_head"} <= set(sites)
    reference = attach_draft_heads(bundle, HeadsFile.read(file), str(file))
    for edit in reference_edits(result.passes):  # the quantized linears, heads' included, as their codes decode (int8 inputs)
        reference = dataclasses.replace(reference, module=edit.apply(reference.module))
    for dims in ({"batch": 1, "seq": 1, "past": 4}, {"batch": 2, "seq": 5, "past": 3}):
        val = validate(reference, result.model_path, ValidateOptions(dims=dims, atol=0.1, rtol=0.1))
        assert val.passed and {f"draft_logits.{j}" for j in range(3)} <= set(val.outputs), val.outputs
        assert val.outputs["draft_logits.0"].max_abs < 0.05


def test_validation_finds_the_heads_beside_the_artifact(llama_kv, tmp_path):
    """A float build validated later (`mlpdeploy validate`): the heads come from the file beside it."""
    bundle, path = llama_kv
    file = heads_file(bundle, tmp_path / "plan.draft-heads.safetensors")
    result = rewrite_model(path, tmp_path / "out" / "model.onnx", [PassSpec("draft-heads", {"artifact": str(file)})])
    val = validate(bundle, result.model_path, ValidateOptions(dims={"batch": 1, "seq": 3, "past": 2}))
    assert val.passed and val.outputs["draft_logits.2"].max_abs < 1e-4
    file.rename(tmp_path / "elsewhere.safetensors")
    with pytest.raises(MlpdeployError, match=r"their file plan\.draft-heads\.safetensors is neither beside it nor at"):
        validate(bundle, result.model_path, ValidateOptions(dims={"batch": 1, "seq": 3, "past": 2}))


def test_heads_for_another_model_are_refused(llama_kv, zoo_export, tmp_path):
    bundle, path = llama_kv
    tiny, _ = zoo_export("llama-tiny", kv_cache=True)
    other = heads_file(tiny, tmp_path / "tiny.draft-heads.safetensors", token_ids=np.arange(0, 256, 3))
    out = tmp_path / "x.onnx"
    with pytest.raises(MlpdeployError, match=r"trained on another model \(hidden size 64.*this model: hidden 128"):
        rewrite_model(path, out, [PassSpec("draft-heads", {"artifact": str(other)})])
    same_shape = tmp_path / "same-shape.safetensors"
    arrays = HeadsFile.read(heads_file(bundle, tmp_path / "ok.safetensors")).arrays()
    arrays["lm_head.sha256"] = rows_sha256(np.zeros((len(SLICE), 128), np.float32))  # as if trained on other weights
    save_file(arrays, str(same_shape))
    with pytest.raises(MlpdeployError, match="trained on another model \\(its lm_head differs"):
        rewrite_model(path, out, [PassSpec("draft-heads", {"artifact": str(same_shape)})])
    assert not out.exists()


def test_misuse_is_one_line(llama_kv, tmp_path):
    bundle, path = llama_kv
    file = heads_file(bundle, tmp_path / "h.safetensors")
    out = tmp_path / "x.onnx"
    cases = [
        ([PassSpec("draft-heads", {"artifact": str(tmp_path / "missing.safetensors")})], "do not exist"),
        ([PassSpec("draft-heads", {"artifact": str(path)})], "is not a safetensors file"),
        ([PassSpec("quantize-weights"), PassSpec("draft-heads", {"artifact": str(file)})], "run draft-heads before passes that rewrite the lm_head"),
        ([PassSpec("draft-heads", {"artifact": str(file)})] * 2, "already has draft-head outputs"),
    ]
    for passes, message in cases:
        with pytest.raises(MlpdeployError, match=message) as err:
            rewrite_model(path, out, passes)
        assert "\n" not in str(err.value)
        assert not out.exists()
    nothing = rewrite_model(path, out, [PassSpec("draft-heads")])  # no heads file: nothing to build in, and why
    assert nothing.report("draft-heads")["rewritten"] == 0 and "needs artifact=FILE" in nothing.report("draft-heads")["skipped"]["graph"]
    assert nothing.op_counts_after == nothing.op_counts_before
