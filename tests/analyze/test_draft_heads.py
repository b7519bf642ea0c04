"""`analyze --draft-heads N`: heads trained on the model's own greedy rollouts, deterministic for a
seed, better than the untrained heads on held-out rollouts; bad inputs are one line, exit 2, no plan."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mlpdeploy.analyze import AnalyzeOptions, analyze_model
from mlpdeploy.analyze.draft_data import Rollouts
from mlpdeploy.analyze.draft_heads import parse_value
from mlpdeploy.analyze.draft_train import choose_slice
from mlpdeploy.cli import cli
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.draft_heads import HeadsFile
from mlpdeploy.model.tasks import DataOptions

DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "mlpdeploy-notes.jsonl"
QUICK = "prompts=12,eval=6,new=24,passage=32,epochs=2,vocab=96"


def _analyze(value: str, seed: int = 0):
    return analyze_model("llama-small", AnalyzeOptions({"draft-heads": value}, seed=seed, samples=8, data=DataOptions(path=DATA, seq_len=64)))


def test_training_is_deterministic_for_a_seed(tmp_path):
    files = []
    for i, seed in enumerate((0, 0, 1)):
        plan = _analyze(f"2:{QUICK}", seed)
        files.append(tmp_path / f"{i}" / "plan.draft-heads.safetensors")
        files[-1].parent.mkdir()
        plan.save(files[-1].parent / "plan.json")
        assert plan.artifacts == {"draft-heads": "plan.draft-heads.safetensors"}
        assert plan.passes == [{"name": "draft-heads", "options": {}}]
    assert files[0].read_bytes() == files[1].read_bytes()
    assert files[0].read_bytes() != files[2].read_bytes()
    data = plan.analyses["draft-heads"]
    assert data["heads"] == 2 and data["slice"] == 96 and data["prompt_style"] == "text"  # the byte model has no chat template
    assert data["rollouts"]["train"]["prompts"] == 12 and data["training"]["steps"] >= 2
    held = data["held_out"]
    assert held["positions"] > 0 and len(held["top1"]) == 2
    assert all(a <= t for a, t in zip(held["accepted"], held["top1"])) and held["accepted"][1] <= held["accepted"][0]
    file = HeadsFile.read(files[2])
    assert file.heads == 2 and file.hidden == 128 and len(file.token_ids) == 96


def test_trained_heads_beat_untrained_ones():
    data = _analyze("2:prompts=24,eval=8,new=32,passage=48,epochs=30,lr=0.01,vocab=0").analyses["draft-heads"]
    trained, untrained = data["held_out"], data["untrained"]  # the same held-out rollouts
    assert data["slice"] == 256 and trained["in_slice"] == [1.0, 1.0]
    for j in range(2):
        assert trained["top1"][j] > untrained["top1"][j] + 0.2, data
    assert trained["top5"][0] >= trained["top1"][0]


def test_rollout_targets():
    rollouts = Rollouts(torch.zeros(5, 4), torch.tensor([10, 11, 12, 20, 21]), torch.tensor([0, 0, 0, 1, 1]))
    assert rollouts.targets(2).tolist() == [[11, 12], [12, -1], [-1, -1], [21, -1], [-1, -1]]
    assert rollouts.source(2).tolist() == [[1, 2], [2, -1], [-1, -1], [4, -1], [-1, -1]]


def test_slice_takes_the_most_frequent_tokens():
    counts = np.array([0, 5, 5, 1, 9, 0])
    assert choose_slice(counts, 6, 3).tolist() == [1, 2, 4]
    assert choose_slice(counts, 6, 4).tolist() == [1, 2, 3, 4]
    assert choose_slice(counts, 6, 5).tolist() == [0, 1, 2, 3, 4]  # a tie among unseen tokens: the lower id
    assert choose_slice(counts, 6, None).tolist() == list(range(6))


@pytest.mark.parametrize("value,message", [
    ("0", "the number of heads must be 1 to 16"), ("x", "give the number of heads"), ("2:bogus=1", "'bogus=1' is not an option"),
    ("2:style=poem", "style is one of chat, text, mix"), ("2:epochs=two", "epochs='two' is not a valid int"), ("2:lr=-1", "lr must be positive"),
])
def test_bad_values(value, message):
    with pytest.raises(MlpdeployError, match=message):
        parse_value(value)


def _cli(args: list[str]):
    return CliRunner().invoke(cli, ["analyze", *args])


def test_bad_inputs_are_one_line_exit_2(tmp_path, minilm_dir):
    plan = tmp_path / "plan.json"
    small = tmp_path / "small.jsonl"
    small.write_text("".join(f'{{"text": "Document {i} says that the cache is rewound on rejection."}}\n' for i in range(6)))
    cases = [
        (["llama-small", "--data", str(DATA), "--draft-heads", "0"], "--draft-heads 0: the number of heads must be 1 to 16"),
        (["llama-small", "--draft-heads", "2"], "--draft-heads trains on text: give llama-small --data FILE"),
        ([str(minilm_dir), "--data", str(small), "--draft-heads", "2"], "is not a causal LM mlpdeploy can generate with"),
    ]
    for args, message in cases:
        result = _cli([*args, "-o", str(plan)])
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.strip().splitlines() if line.startswith("error")]
        assert len(lines) == 1 and message in lines[0], result.output
        assert not plan.exists() and not (tmp_path / "plan.draft-heads.safetensors").exists()
