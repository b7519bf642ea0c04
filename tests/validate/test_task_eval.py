"""Task metrics in validation: equal on an exact export, budget enforced on a degraded one."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from mlpdeploy.cli import cli
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.export.torch_export import export_model
from mlpdeploy.model.source import load_model
from mlpdeploy.validate import ValidateOptions, validate


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    bundle = load_model("vit-small")
    path = tmp_path_factory.mktemp("vit") / "vit.onnx"
    export_model(bundle, path)
    return bundle, path


def _degraded(src, dst):
    """Flip the sign of the classifier head: predictions become the least likely class."""
    model = onnx.load(str(src))
    heads = [i for i in model.graph.initializer if i.name.startswith("head.")]
    assert heads, [i.name for i in model.graph.initializer]
    for init in heads:
        init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(model, str(dst))
    (dst.parent / "bad.manifest.json").write_text((src.parent / "vit.manifest.json").read_text())


def test_exact_export_keeps_metric(vit):
    bundle, path = vit
    report = validate(bundle, path, ValidateOptions(task=True, task_limit=64, max_metric_delta=0.0))
    task = report.task
    assert task["metric"] == "accuracy" and task["samples"] == 64
    assert task["reference"] == task["candidate"] and task["agreement"] == 1.0
    assert task["passed"] and report.passed
    assert task["reference"] > 0.9


def test_degraded_candidate_fails_the_budget(vit, tmp_path):
    bundle, path = vit
    bad = tmp_path / "bad.onnx"
    _degraded(path, bad)
    report = validate(bundle, bad, ValidateOptions(task_limit=64, max_metric_delta=0.05, atol=1e9))
    assert report.task["delta"] < -0.5 and report.task["agreement"] < 0.5
    assert report.task["passed"] is False and report.passed is False
    out = tmp_path / "val.json"
    result = CliRunner().invoke(cli, ["validate", "--reference", "vit-small", "--candidate", str(bad), "--atol", "1e9",
                                      "--task-samples", "64", "--max-metric-delta", "0.05", "--json", str(out)])
    assert result.exit_code == 1, result.output
    assert json.loads(out.read_text())["task"]["passed"] is False


def test_task_needs_a_task(tiny_spec, tiny_export):
    with pytest.raises(MlpdeployError, match="task metrics need a torch reference with a task"):
        validate(load_model(tiny_spec), tiny_export.model_path, ValidateOptions(task=True))


@pytest.mark.parametrize("seq, shape, expected", [(256, ["batch", "seq", 49152], 2),  # SmolLM2: 50 MB of logits a window
                                                  (128, ["batch", "seq", 256], 16),  # the zoo's byte-level LMs: the default
                                                  (4096, ["batch", "seq", 262144], 1),  # never below one window
                                                  (None, ["batch", 10], 16)])  # a classifier: no seq, no budget
def test_task_batches_keep_their_logits_within_the_budget(seq, shape, expected):
    from types import SimpleNamespace

    from mlpdeploy.validate.task import task_batch_size

    candidate = SimpleNamespace(manifest=SimpleNamespace(outputs=[{"name": "logits", "dtype": "float32", "shape": shape}]))
    assert task_batch_size(SimpleNamespace(seq_len=seq), candidate, 16) == expected
    assert task_batch_size(SimpleNamespace(seq_len=seq), SimpleNamespace(manifest=None), 16) == 16
