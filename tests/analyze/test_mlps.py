"""find_mlps: MLPs found by their projections' names, in every naming the zoo and HF use."""

from __future__ import annotations

import pytest
from torch import nn

from mlpdeploy.analyze import find_mlps
from mlpdeploy.zoo import ZOO


class Llama(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 4)


class Bert(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.Module()
        self.attention.output = nn.Module()
        self.attention.output.dense = nn.Linear(4, 4)  # attention's output projection: no intermediate beside it
        self.intermediate, self.output = nn.Module(), nn.Module()
        self.intermediate.dense, self.output.dense = nn.Linear(4, 16), nn.Linear(16, 4)


def test_llama_naming_is_gated():
    model = nn.Module()
    model.layers = nn.ModuleList([nn.Module(), nn.Module()])
    for layer in model.layers:
        layer.mlp = Llama()
    sites = find_mlps(model)
    assert [s.scope for s in sites] == ["layers.0.mlp", "layers.1.mlp"]
    assert sites[0].ups == ("layers.0.mlp.gate_proj", "layers.0.mlp.up_proj") and sites[0].down == "layers.0.mlp.down_proj"
    assert sites[0].gated and sites[0].hidden == 6


def test_bert_naming_and_attention_output_is_not_an_mlp():
    sites = find_mlps(Bert())
    assert [(s.scope, s.ups, s.down, s.gated) for s in sites] == [("", ("intermediate.dense",), "output.dense", False)]


def test_no_mlp():
    assert find_mlps(nn.Sequential(nn.Linear(3, 3), nn.ReLU())) == []


@pytest.mark.parametrize("name, scopes", [
    ("llama-tiny", ["layers.0.mlp", "layers.1.mlp"]),
    ("opt-relu-tiny", ["layers.0", "layers.1"]),  # OPT's block holds fc1/fc2 itself
    ("vit-tiny", ["blocks.0.mlp", "blocks.1.mlp"]),
    ("mixer-tiny", ["blocks.0.mlp_tokens", "blocks.0.mlp_channels", "blocks.1.mlp_tokens", "blocks.1.mlp_channels"]),
    ("gmlp-tiny", ["blocks.0.mlp_channels", "blocks.1.mlp_channels"]),
])
def test_zoo(name, scopes):
    assert [s.scope for s in find_mlps(ZOO[name].build().module)] == scopes
