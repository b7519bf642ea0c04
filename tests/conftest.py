"""Shared fixtures: a user-style factory model, exported once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY_SPEC = f"{FIXTURES / 'tiny_mlp.py'}:build"


@pytest.fixture(scope="session")
def tiny_spec() -> str:
    return TINY_SPEC


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """The fixture model exported to ONNX (with its manifest); returns the ExportResult."""
    from mlpdeploy.export.torch_export import export_model
    from mlpdeploy.model.source import load_model

    out = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    return export_model(load_model(TINY_SPEC), out)


@pytest.fixture(scope="session")
def zoo_export(tmp_path_factory):
    """`get(MODEL, kv_cache=False)` → (bundle, exported .onnx path with its manifest), each exported
    once per session (per xdist worker)."""
    from mlpdeploy.export.torch_export import export_model
    from mlpdeploy.model.kv_cache import with_kv_cache
    from mlpdeploy.model.source import load_model

    done = {}

    def get(model: str, kv_cache: bool = False):
        if (model, kv_cache) not in done:
            bundle = load_model(model)
            bundle = with_kv_cache(bundle) if kv_cache else bundle
            name = f"{Path(model).name}{'-kv' if kv_cache else ''}.onnx"
            done[model, kv_cache] = (bundle, export_model(bundle, tmp_path_factory.mktemp("zoo") / name).model_path)
        return done[model, kv_cache]

    return get


def _hf_dir(tmp_path_factory, name: str, model_class: str, config_class: str, **config):
    transformers = pytest.importorskip("transformers", reason="needs the hf extra")
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hf") / name
    getattr(transformers, model_class)(getattr(transformers, config_class)(**config)).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def hf_llama_dir(tmp_path_factory):
    """A tiny random-weight Hugging Face LlamaForCausalLM saved as a checkpoint directory (GQA, 2 layers)."""
    return _hf_dir(tmp_path_factory, "llama", "LlamaForCausalLM", "LlamaConfig", vocab_size=128, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


@pytest.fixture(scope="session")
def hf_bert_dir(tmp_path_factory):
    """A tiny random-weight Hugging Face BertModel saved as a checkpoint directory (post-norm, 2 layers)."""
    return _hf_dir(tmp_path_factory, "bert", "BertModel", "BertConfig", vocab_size=128, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite golden snapshots (tests/passes/golden/) with the current results instead of comparing",
    )
