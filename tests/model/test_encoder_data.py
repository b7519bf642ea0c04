"""--data text on a real sentence encoder (all-MiniLM-L6-v2): the metric is the cosine of the
output mean-pooled over the attention mask against the torch model's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlpdeploy.model.tasks import DataOptions, resolve_task
from mlpdeploy.model.torch_run import first_output_fn

NOTES = [json.loads(line)["text"] for line in open("bench/data/mlpdeploy-notes.jsonl", encoding="utf-8")]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    from mlpdeploy.model import load_model

    return load_model(str(minilm_dir))


@pytest.fixture(scope="module")
def task(minilm, tmp_path_factory):
    path = tmp_path_factory.mktemp("enc") / "notes.jsonl"
    path.write_text("".join(json.dumps({"text": t[:600]}) + "\n" for t in NOTES[:10]), encoding="utf-8")
    return resolve_task(minilm, DataOptions(path=path, seq_len=48, samples=6))


def test_windows_and_reference_match_plain_transformers(task, minilm_dir):
    transformers = pytest.importorskip("transformers")
    import torch

    assert task.metric == "cosine" and task.kind == "encoder"
    inputs, reference = task.eval_arrays()
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape[1] == 48 and (ids[:, 0] == 101).all()  # [CLS] first
    lengths = mask.sum(1)
    assert (ids[np.arange(len(ids)), lengths - 1] == 102).all() and (mask[:, 0] == 1).all()  # [SEP] last
    assert (lengths < 48).any()  # a document's tail is padded: the pooling must honour the mask
    model = transformers.AutoModel.from_pretrained(str(minilm_dir)).eval()
    with torch.no_grad():
        hidden = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    m = torch.from_numpy(mask)[..., None].float()
    pooled = (hidden * m).sum(1) / m.sum(1)  # sentence-transformers' mean pooling
    np.testing.assert_allclose(reference, pooled.numpy(), rtol=1e-4, atol=1e-5)
    assert len(next(task.calibration_batches(1, 6))["input_ids"]) == 6 and set(next(task.calibration_batches(1, 2))) == {"input_ids", "attention_mask"}


def test_cosine_is_one_for_torch_and_falls_with_noise(task, minilm):
    run = first_output_fn(minilm.module, ["input_ids", "attention_mask"])
    exact = task.evaluate(run, batch_size=4)
    assert exact["value"] == pytest.approx(1.0, abs=1e-6) and exact["predictions"].shape == (exact["samples"], 384)
    rng = np.random.default_rng(0)
    noisy = task.evaluate(lambda feed: run(feed) + rng.normal(0, 0.3, (len(feed["input_ids"]), 48, 384)).astype(np.float32), batch_size=4)
    assert 0.5 < noisy["value"] < 0.999
    assert task.agreement(exact["predictions"], noisy["predictions"]) == pytest.approx(noisy["value"], abs=1e-6)
