"""Validation inputs come from the data: the task's held-out samples, a cached decoder's decode step
on the cache the reference computed in a real prefill; generated only without a task, and then
the report says so."""

from __future__ import annotations

import numpy as np
import pytest

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.data import LMTask
from mlpdeploy.model.source import load_model
from mlpdeploy.validate import ValidateOptions, validate
from mlpdeploy.validate.inputs import validation_inputs
from mlpdeploy.validate.outputs import Remembered
from mlpdeploy.validate.runners import TorchRunner


class Counting:
    """A runner's infer, counting calls."""

    def __init__(self, runner):
        self.runner, self.calls = runner, 0

    def infer(self, feed):
        self.calls += 1
        return self.runner.infer(feed)


def test_cached_decoder_decodes_on_the_references_own_prefill_cache(zoo_export):
    bundle, _ = zoo_export("llama-tiny", kv_cache=True)
    with TorchRunner(bundle) as runner:
        counting = Counting(runner)
        run = Remembered(counting)
        inputs = validation_inputs(bundle.inputs, bundle.dim_bounds(), task=bundle.task, cache=bundle.cache, run_reference=run)
        prefill, decode = inputs.feeds
        assert inputs.names == ["prefill", "decode"] and not inputs.generated
        assert "held-out windows of stdlib-bytes" in inputs.source and "prefill of 64 tokens" in inputs.source
        task_ids = next(iter(bundle.task.eval_batches(2, limit=2)))["input_ids"]
        np.testing.assert_array_equal(prefill["input_ids"], task_ids[:, :64])  # real text: the first held-out windows
        np.testing.assert_array_equal(decode["input_ids"], task_ids[:, 64:65])
        assert prefill["past_key_values.0.key"].shape[2] == 0 and decode["attention_mask"].shape == (2, 65)
        np.testing.assert_array_equal(decode["position_ids"], [[64], [64]])
        presents = run(prefill)
        assert counting.calls == 1  # the prefill ran once: validation reuses it
        for layer in bundle.cache.layers:
            np.testing.assert_array_equal(decode[f"past_key_values.{layer}.key"], presents[f"present.{layer}.key"])
            np.testing.assert_array_equal(decode[f"past_key_values.{layer}.value"], presents[f"present.{layer}.value"])


def test_validate_a_cached_zoo_decoder_on_its_task(zoo_export):
    bundle, path = zoo_export("llama-tiny", kv_cache=True)
    report = validate(load_model("llama-tiny"), path, ValidateOptions(dims={"past": 9, "seq": 3}))  # the cached reference is made
    assert report.passed and [f["name"] for f in report.input_data["feeds"]] == ["prefill", "decode"]
    decode = report.input_data["feeds"][1]["shapes"]
    assert decode["input_ids"] == [2, 3] and decode["past_key_values.1.value"][2] == 9
    assert report.outputs["logits"].used < 0.1 and report.outputs["present.1.key"].feed in ("prefill", "decode")


def test_zoo_task_samples_without_a_cache(zoo_export):
    bundle, path = zoo_export("llama-tiny")
    report = validate(bundle, path, ValidateOptions(dims={"batch": 3, "seq": 17}))
    assert report.inputs == {"input_ids": [3, 17]} and report.input_data["source"] == "3 held-out samples of stdlib-bytes"
    assert not report.input_data["generated"] and report.passed


def test_generated_only_without_a_task_and_then_said(tiny_spec, tiny_export):
    report = validate(load_model(tiny_spec), tiny_export.model_path)
    assert report.input_data["generated"] and "no task or --data" in report.input_data["source"]
    assert report.to_json()["input_data"]["source"].startswith("generated from the manifest (seed 0")


def test_a_task_for_another_input_falls_back_to_generated(zoo_export):
    bundle, _ = zoo_export("llama-tiny")
    other = LMTask(input_name="tokens")
    inputs = validation_inputs(bundle.inputs, bundle.dim_bounds(), task=other)
    assert inputs.generated and "feeds tokens, which the model has no input for" in inputs.source


def test_windows_too_short_for_a_prefill_and_a_decode_step(zoo_export):
    bundle, _ = zoo_export("llama-tiny", kv_cache=True)
    with TorchRunner(bundle) as runner, pytest.raises(MlpdeployError, match="too short for a prefill and a decode step of 200"):
        validation_inputs(bundle.inputs, bundle.dim_bounds(), task=bundle.task, cache=bundle.cache, run_reference=Remembered(runner),
                          dims={"seq": 200})
