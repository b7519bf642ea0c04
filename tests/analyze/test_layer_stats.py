"""--layer-stats against statistics computed by hand in torch, on the same calibration batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlpdeploy.analyze import AnalyzeOptions, analyze_model
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model import calibration_batches, load_model


def _by_hand(bundle, batches, scope, up, down):
    """RMS of the up projection's input, of the down projection's output, and the fraction of
    the down projection's inputs above zero, over every batch."""
    modules = dict(bundle.module.named_modules())
    seen = {"x": [], "h": [], "y": []}

    def on_up(module, inputs, output):
        seen["x"].append(inputs[0].detach().flatten())

    def on_down(module, inputs, output):
        seen["h"].append(inputs[0].detach().flatten())
        seen["y"].append(output.detach().flatten())

    hooks = [modules[up].register_forward_hook(on_up), modules[down].register_forward_hook(on_down)]
    with torch.no_grad():
        for feed in batches:
            bundle.module(*(torch.from_numpy(feed[s.name]) for s in bundle.inputs))
    for h in hooks:
        h.remove()
    x, h, y = (torch.cat(seen[k]).double() for k in ("x", "h", "y"))
    return float(x.square().mean().sqrt()), float(y.square().mean().sqrt()), float((h > 0).double().mean())


@pytest.mark.parametrize("name, scope, up, down", [
    ("opt-relu-small", "layers.1", "layers.1.fc1", "layers.1.fc2"),
    ("llama-tiny", "layers.0.mlp", "layers.0.mlp.gate_proj", "layers.0.mlp.down_proj"),
    ("mixer-tiny", "blocks.1.mlp_tokens", "blocks.1.mlp_tokens.fc1", "blocks.1.mlp_tokens.fc2"),
])
def test_matches_torch(name, scope, up, down):
    bundle = load_model(name)
    plan = analyze_model(bundle, AnalyzeOptions({"layer-stats": None}, samples=12, seed=3))
    stats = plan.analyses["layer-stats"][scope]
    batches = calibration_batches(bundle, n=2, batch_size=8, seed=3)  # what 12 samples in batches of 8 means
    x_rms, y_rms, active = _by_hand(bundle, batches, scope, up, down)
    assert stats["input_rms"] == pytest.approx(x_rms, rel=1e-9)
    assert stats["output_rms"] == pytest.approx(y_rms, rel=1e-9)
    assert stats["active_fraction"] == pytest.approx(active, rel=1e-12)
    module = dict(bundle.module.named_modules())
    assert stats["weight_bytes"] == sum(p.numel() * 4 for path in (*stats["ups"], stats["down"]) for p in module[path].parameters())
    assert plan.calibration["samples"] == 16 and plan.calibration["batches"] == 2 and plan.passes == []


def test_relu_model_is_sparse_and_swiglu_is_not():
    """The trained ReLU decoder fires a minority of its neurons; a gated product is positive about half the time."""
    relu = analyze_model("opt-relu-small", AnalyzeOptions({"layer-stats": None}, samples=16)).analyses["layer-stats"]
    gated = analyze_model("llama-small", AnalyzeOptions({"layer-stats": None}, samples=16)).analyses["layer-stats"]
    assert all(s["active_fraction"] < 0.4 and not s["gated"] for s in relu.values())
    assert all(0.3 < s["active_fraction"] < 0.7 and s["gated"] for s in gated.values())


def test_calibration_comes_from_the_train_split_and_a_file(tmp_path):
    plan = analyze_model("llama-tiny", AnalyzeOptions({"layer-stats": None}, samples=8))
    assert plan.calibration["source"] == "task:stdlib-bytes:train" if load_model("llama-tiny").task else plan.calibration["source"] == "generated"
    ids = np.random.default_rng(0).integers(0, 256, size=(5, 16)).astype(np.int64)
    np.savez(tmp_path / "calib.npz", input_ids=ids)
    from_file = analyze_model("llama-tiny", AnalyzeOptions({"layer-stats": None}, calibration=tmp_path / "calib.npz", samples=5))
    assert from_file.calibration["source"].startswith("npz:") and from_file.calibration["samples"] == 5
    assert from_file.analyses["layer-stats"]["layers.0.mlp"]["tokens"] == 5 * 16


def test_errors():
    with pytest.raises(MlpdeployError, match="^choose at least one analysis: --layer-stats"):
        analyze_model("llama-tiny", AnalyzeOptions({}))
    with pytest.raises(MlpdeployError, match="^unknown analysis 'nope'; available analyses: layer-stats"):
        analyze_model("llama-tiny", AnalyzeOptions({"nope": None}))
    with pytest.raises(MlpdeployError, match="^--samples must be at least 1"):
        analyze_model("llama-tiny", AnalyzeOptions({"layer-stats": None}, samples=0))
