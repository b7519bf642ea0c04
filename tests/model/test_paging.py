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


def test_compile_reference_edit_leaves_the_original_weights_out_of_memory(llama_dir):
    """Validation's int4 reference reads every original linear weight to decode it; compile pages
    the originals out again (1.1 B int4: 4 GB held through validation before)."""
    from mlpdeploy.compile import _edited_reference
    from mlpdeploy.passes.base import ReferenceEdit
    from mlpdeploy.quant import QuantizedSite, parse_format, quantized_sites_view

    bundle = load_model(str(llama_dir))
    module = bundle.module
    release_weights(module)
    linears = [name for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)]
    sites = [QuantizedSite((name,), parse_format("int4")) for name in linears]
    reference = _edited_reference(bundle, None, [ReferenceEdit(lambda m: quantized_sites_view(m, sites), "int4")])
    weights = sum(module.get_submodule(name).weight.numel() * 4 for name in linears)
    assert release_weights(module) < 0.1 * weights  # nothing of the originals was left resident to release
    ids = torch.randint(0, 4000, (1, 5), generator=torch.Generator().manual_seed(2))
    assert torch.equal(_forward(reference.module, ids), _forward(quantized_sites_view(module, sites), ids))
