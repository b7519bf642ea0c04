"""Hugging Face checkpoint directories (built from configs in a temp dir; nothing downloaded)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs the hf extra")

from mlpdeploy.compile import CompileOptions, compile_model  # noqa: E402
from mlpdeploy.passes import pass_report  # noqa: E402


def _save(model, path):
    model.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    return _save(transformers.LlamaForCausalLM(config), tmp_path_factory.mktemp("hf") / "llama")


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64,
    )
    return _save(transformers.BertModel(config), tmp_path_factory.mktemp("hf") / "bert")


DECODERS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
}


@pytest.mark.parametrize("family", DECODERS)
def test_causal_lm_dir_compiles(family, tmp_path):
    config_cls, model_cls = (getattr(transformers, n) for n in DECODERS[family])
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )
    directory = _save(model_cls(config), tmp_path / family)
    report = compile_model(str(directory), tmp_path / "out")
    assert report["kind"] == "hf" and report["passed"]
    assert report["validation"]["outputs"]["logits"]["max_abs"] <= 1e-4
    assert report["validation"]["outputs"]["logits"]["shape"] == [2, 8, 128]


KV_FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
}


@pytest.mark.parametrize("family", [f if f == "llama" else pytest.param(f, marks=pytest.mark.slow) for f in KV_FAMILIES])
def test_causal_lm_dir_compiles_with_kv_cache(family, tmp_path):
    """--kv-cache on HF directories: GQA keeps 2 KV heads, fuse-gated-mlp fires on the cached graph,
    and greedy generation from the artifact equals the HF model's own generate()."""
    from mlpdeploy.passes import PassSpec
    from mlpdeploy.runtime.engine import Engine
    from mlpdeploy.runtime.generate import CachedGenerator

    config_cls, model_cls = (getattr(transformers, n) for n in KV_FAMILIES[family])
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    model = model_cls(config).eval()
    directory = _save(model, tmp_path / family)
    report = compile_model(str(directory), tmp_path / "out", CompileOptions(kv_cache=True, passes=[PassSpec("fuse-gated-mlp")]))
    assert report["passed"] and report["kv_cache"]["kv_heads"] == 2 and report["kv_cache"]["layers"] == [0, 1]
    assert pass_report(report["stages"]["rewrite"]["passes"], "fuse-gated-mlp")["rewritten"] == 2
    assert report["validation"]["outputs"]["present.1.value"]["shape"][1] == 2
    prompt = [5, 17, 99, 3]
    ours = CachedGenerator(Engine.load(tmp_path / "out")).generate([prompt], 12).tokens[0]
    with torch.no_grad():
        theirs = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours == theirs[0, len(prompt):].tolist()


def test_bert_dir_compiles_with_mask(bert_dir, tmp_path):
    report = compile_model(str(bert_dir), tmp_path / "out")
    assert report["passed"]
    assert report["validation"]["inputs"] == {"input_ids": [2, 8], "attention_mask": [2, 8]}
    assert report["validation"]["outputs"]["last_hidden_state"]["max_abs"] <= 1e-4


def test_dir_without_weights_is_a_clear_error(tmp_path, llama_dir):
    from mlpdeploy.errors import MlpdeployError
    from mlpdeploy.model.source import load_model

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((llama_dir / "config.json").read_text())
    with pytest.raises(MlpdeployError, match="cannot load weights from"):
        load_model(str(broken))
