"""The torch reference of quantized linears: a weight tied to a token embedding is swapped, not
written into, so the embedding keeps its float weights (as the exported graph's Gather does)."""

from __future__ import annotations

import torch

from mlpdeploy.quant import QuantizedSite, parse_format, quantized_linears, quantized_sites_copy


class TiedLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(40, 64)
        self.head = torch.nn.Linear(64, 40, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.embed(ids))


def test_tied_head_is_quantized_alone():
    torch.manual_seed(0)
    model = TiedLM()
    original = model.embed.weight.detach().clone()
    with quantized_linears(model, {"head": parse_format("int4")}):
        assert torch.equal(model.embed.weight, original)
        assert not torch.equal(model.head.weight, original)
    assert model.head.weight is model.embed.weight and torch.equal(model.embed.weight, original)
    copy = quantized_sites_copy(model, [QuantizedSite(("head",), parse_format("int4"))])
    assert torch.equal(copy.embed.weight, original) and not torch.equal(copy.head.weight, original)
    assert torch.equal(model.head.weight, original)  # the original model is untouched
