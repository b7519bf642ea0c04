"""release_weights: a Hugging Face model's memory-mapped weights leave memory and come back
unchanged on the next read; weights that were written, or live in ordinary memory, stay."""

from __future__ import annotations

import pytest
import torch

from mlpdeploy.memory import rss_mib
from mlpdeploy.model import load_model
from mlpdeploy.model.paging import release_weights

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from mlpdeploy.zoo.random_llama import Shape, build

    # 2 layers, d 512: ~27 MB of weights in one safetensors shard
    return build(tmp_path_factory.mktemp("paging") / "llama", Shape(layers=2, hidden=512, intermediate=1408, heads=8, kv_heads=2, vocab=4000))


def _forward(module, ids):
    with torch.no_grad():
        return module(ids)


def test_memory_mapped_weights_are_released_and_read_back_unchanged(llama_dir):
    module = load_model(str(llama_dir)).module
    ids = torch.randint(0, 4000, (2, 7), generator=torch.Generator().manual_seed(0))
    first = _forward(module, ids)
    resident = rss_mib()
    released = release_weights(module)
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    assert released >= 0.9 * weights
    assert rss_mib() <= resident - 0.8 * weights / 2**20
    assert torch.equal(_forward(module, ids), first)


def test_written_weights_are_kept(llama_dir):
    module = load_model(str(llama_dir)).module
    ids = torch.randint(0, 4000, (1, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        module.model.model.layers[0].mlp.down_proj.weight.mul_(2.0)  # its page becomes this process's own copy
    changed = _forward(module, ids)
    assert release_weights(module) == 0  # the mapping holds a written page: dropping it would lose the write
    assert torch.equal(_forward(module, ids), changed)


def test_weights_in_ordinary_memory_are_left_alone(tiny_spec):
    module = load_model(tiny_spec).module
    assert release_weights(module) == 0
