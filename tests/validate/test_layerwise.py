"""Per-layer validation finds layers through scopes and localizes a perturbed weight."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from mlpdeploy.export.torch_export import export_model
from mlpdeploy.model.inputs import generate_inputs
from mlpdeploy.model.source import load_model
from mlpdeploy.validate.layers import compare_layers, is_layer_path

SPEC = f"{Path(__file__).parents[1] / 'fixtures' / 'tiny_mlp.py'}:build_stack"


def test_layer_paths():
    assert is_layer_path("layers.3") and is_layer_path("model.layers.3.mlp")
    assert not is_layer_path("layers.3.mlp.gate_proj") and not is_layer_path("head") and not is_layer_path("")


def test_perturbed_layer_is_localized(tmp_path):
    bundle = load_model(SPEC)
    exported = export_model(bundle, tmp_path / "stack.onnx")
    feed = generate_inputs(bundle.inputs)
    errors, _ = compare_layers(bundle, exported.model_path, feed)
    assert {"blocks.0", "blocks.1", "blocks.2", "blocks.1.mlp", "blocks.1.norm"} <= set(errors)
    assert max(e.max_abs for e in errors.values()) < 1e-5

    model = onnx.load(str(exported.model_path))
    for init in model.graph.initializer:
        if init.name == "blocks.1.mlp.down_proj.weight_t":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    errors, _ = compare_layers(bundle, bad, feed)
    assert errors["blocks.0"].max_abs < 1e-5 and errors["blocks.1.norm"].max_abs < 1e-5
    assert errors["blocks.1.mlp"].max_abs > 1e-3 and errors["blocks.2"].max_abs > 1e-3
    assert np.isclose(errors["blocks.0"].cosine, 1.0)


def test_graph_without_scopes_is_skipped_with_reason(tmp_path):
    bundle = load_model(SPEC)
    exported = export_model(bundle, tmp_path / "stack.onnx")
    model = onnx.load(str(exported.model_path))
    for node in model.graph.node:
        del node.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    errors, skipped = compare_layers(bundle, plain, generate_inputs(bundle.inputs))
    assert errors == {} and "carries no module scopes" in skipped["*"]


def test_unscoped_nodes_inherit_their_producers_scope(tmp_path):
    """The exporter's optimizer emits some nodes (e.g. RoPE's Split) without scopes; whole
    decoder layers are still found because those nodes inherit the scope they sit in."""
    bundle = load_model("llama-tiny")
    exported = export_model(bundle, tmp_path / "llama.onnx")
    errors, _ = compare_layers(bundle, exported.model_path, generate_inputs(bundle.inputs))
    assert {"layers.1", "layers.1.self_attn", "layers.1.mlp"} <= set(errors)
    assert max(e.max_abs for e in errors.values()) < 1e-4
