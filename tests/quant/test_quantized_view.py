"""quantized_sites_view: the quantized reference for the cost of the quantized weights alone — it
computes what quantized_sites_copy computes, shares every other weight with the model, and
unties an LM head tied to the embedding (only the head is quantized, as in the exported graph)."""

from __future__ import annotations

import pytest
import torch

from mlpdeploy.quant import QuantizedSite, parse_format, quantized_sites_copy, quantized_sites_view


class TiedLM(torch.nn.Module):
    def __init__(self, vocab=50, dim=64):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.gate, self.up, self.down = torch.nn.Linear(dim, 96), torch.nn.Linear(dim, 96), torch.nn.Linear(96, dim)
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, ids):
        h = self.embed(ids)
        h = h + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))
        return self.head(self.norm(h))


def _sites(spec, int8=None):
    fmt = parse_format(spec)
    return [QuantizedSite(("gate", "up"), fmt, int8), QuantizedSite(("down",), fmt, int8)]


@pytest.mark.parametrize("spec, int8", [("int4", None), ("nvfp4", None), ("int4", 32)])
def test_view_computes_what_the_copy_computes(spec, int8):
    torch.manual_seed(0)
    model = TiedLM().eval()
    ids = torch.randint(0, 50, (3, 7))
    with torch.no_grad():
        assert torch.equal(quantized_sites_view(model, _sites(spec, int8))(ids), quantized_sites_copy(model, _sites(spec, int8))(ids))


def test_view_shares_what_it_does_not_quantize():
    torch.manual_seed(1)
    model = TiedLM().eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    view = quantized_sites_view(model, _sites("int4"))
    own = dict(model.named_parameters())
    for name, param in view.named_parameters():
        if name in ("gate.weight", "up.weight", "down.weight"):
            assert param.data_ptr() != own[name].data_ptr() and not torch.equal(param, own[name]), name
        else:
            assert param.data_ptr() == own[name].data_ptr(), name
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the model keeps its weights


def test_tied_head_is_untied_in_the_view():
    torch.manual_seed(2)
    model = TiedLM().eval()
    view = quantized_sites_view(model, [QuantizedSite(("head",), parse_format("int4"))])
    assert view.embed.weight.data_ptr() == model.embed.weight.data_ptr()
    assert not torch.equal(view.head.weight, model.embed.weight)
    assert model.head.weight is model.embed.weight  # the model itself stays tied


def test_embedding_site_in_the_view_computes_what_the_copy_computes():
    """quantize-embedding's reference: the embedding table decoded, the tied head left in float."""
    torch.manual_seed(3)
    model = TiedLM().eval()
    sites = [QuantizedSite(("embed",), parse_format("int4"))]
    ids = torch.randint(0, 50, (2, 5))
    view = quantized_sites_view(model, sites)
    with torch.no_grad():
        assert torch.equal(view(ids), quantized_sites_copy(model, sites)(ids))
    assert view.head.weight.data_ptr() == model.embed.weight.data_ptr() and not torch.equal(view.embed.weight, model.embed.weight)
