"""The trained zoo models: checkpoints load, cards state the measured numbers, and the eval
metric on a slice of the eval split is where the card says; the training script runs."""

from __future__ import annotations

import json
import re

import pytest

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.torch_run import first_output_fn
from mlpdeploy.zoo import ZOO
from mlpdeploy.zoo.common import CHECKPOINTS, checkpoint_metadata

TRAINED = [name for name, entry in ZOO.items() if entry.trained]
LMS = {"llama-small", "opt-relu-small"}


def test_required_trained_models_are_registered():
    assert {"llama-small", "opt-relu-small", "vit-small", "mixer-small"} <= set(TRAINED)


def test_checkpoints_fit_the_size_budget():
    total = sum(p.stat().st_size for p in CHECKPOINTS.glob("*.safetensors"))
    assert 0 < total <= 30e6


@pytest.mark.parametrize("name", TRAINED)
def test_trained_model_loads_and_meets_its_card_on_an_eval_slice(name):
    bundle = ZOO[name].build()
    trained = bundle.trained
    task = bundle.task
    assert task is not None and trained is not None and trained.metric == task.metric
    card = (CHECKPOINTS.parent / "cards" / f"{name}.md").read_text()
    assert f"**{trained.value}**" in card and f"{bundle.num_parameters:,}" in card
    if name in LMS:
        cfg = bundle.module.config
        assert cfg.n_layers >= 4 and task.seq_len == cfg.max_positions == bundle.dim_range("seq")[1]
        # the learned model is far below the unigram baseline on the full split …
        assert trained.value < 0.5 * trained.baseline
        result = task.evaluate(first_output_fn(bundle.module, [task.input_name]), batch_size=8, limit=24)
        # … and on this slice within a band around the card's value
        assert trained.value / 1.5 < result["value"] < trained.value * 1.5
        assert result["value"] < 0.5 * task.unigram_perplexity()
    else:
        assert trained.value >= 0.95
        result = task.evaluate(first_output_fn(bundle.module, [task.input_name]), batch_size=64, limit=192)
        assert result["value"] >= 0.9 * trained.value


def test_checkpoint_for_another_config_is_refused():
    from mlpdeploy.zoo import common, vit

    other = vit.ViTConfig(image_size=8, patch_size=2, in_chans=1, dim=32, depth=1, n_heads=2, mlp_dim=64)
    with pytest.raises(MlpdeployError, match=r"checkpoint .*vit-small\.safetensors was trained for config .*retrain"):
        common.trained_bundle(vit.build, other, "vit-small", None)
    with pytest.raises(MlpdeployError, match=r"checkpoint .*nope\.safetensors not found; train it"):
        common.trained_bundle(vit.build, vit.SMALL, "nope", None)


def test_metadata_records_config_and_metrics():
    for name in TRAINED:
        meta = checkpoint_metadata(name)
        config = json.loads(meta["config"])
        metrics = json.loads(meta["metrics"])
        assert config["class"].endswith("Config")
        assert 0 < metrics["train_seconds"] <= 15 * 60, f"{name} trained longer than the 15-minute budget"


@pytest.mark.parametrize("name", ["vit-small", pytest.param("llama-small", marks=pytest.mark.slow)])
def test_training_script_writes_a_loadable_checkpoint_and_card(name, tmp_path):
    from mlpdeploy.zoo import train

    lines = []
    metrics = train.train(name, steps=3, out_dir=tmp_path, log=lines.append)
    path = tmp_path / "checkpoints" / f"{name}.safetensors"
    card = (tmp_path / "cards" / f"{name}.md").read_text()
    assert path.is_file() and re.search(rf"\*\*{re.escape(str(metrics['value']))}\*\*", card)
    assert any("step 2/3" in line for line in lines)
    from safetensors.torch import load_file

    recipe = train.RECIPES[name]
    model = recipe.model()
    model.load_state_dict(load_file(str(path)))
    assert metrics["steps"] == 3 and metrics["metric"] == recipe.task.metric


def test_training_script_rejects_unknown_names(capsys):
    from mlpdeploy.zoo import train

    assert train.main(["no-such-model"]) == 2
    assert "unknown recipe(s) ['no-such-model']; available are" in capsys.readouterr().err
