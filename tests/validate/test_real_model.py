"""Validation judges a real pretrained decoder (SmolLM2-135M-Instruct): a correct fp32 build with its
KV cache passes, a planted fault — one MLP's down projection scaled by 1.01 — fails.

Inputs are held-out windows of bench/data/mlpdeploy-notes.jsonl (written in 2026, not in the
model's training data) through `--data`; the decode step's past is the torch prefill's cache.
Default run: the 4-layer real copy; `make test-slow`: the whole 30-layer model (run it alone:
its compile peaks at several GB).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from mlpdeploy.cli import cli

NOTES = Path(__file__).parents[2] / "bench" / "data" / "mlpdeploy-notes.jsonl"


DATA = ["--data", str(NOTES), "--seq-len", "128", "--task-samples", "2"]  # held-out windows of 128 tokens; validation uses 64 + 1


def _compile(model_dir: Path, out: Path) -> dict:
    result = CliRunner().invoke(cli, ["compile", str(model_dir), "--kv-cache", *DATA, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text()) | {"output": result.output}


def _planted_fault(built: Path, dst: Path, layer: int) -> Path:
    """A copy of the built model whose layers.{layer}.mlp.down_proj weight is scaled by 1.01."""
    model = onnx.load(str(built))
    name = f"model.model.layers.{layer}.mlp.down_proj.weight_t"
    (init,) = [i for i in model.graph.initializer if i.name == name]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.01), name))
    onnx.save(model, str(dst), save_as_external_data=model.ByteSize() > 2**31 - 1, location=f"{dst.name}.data")
    for suffix in (".manifest.json", ".session.json"):
        shutil.copyfile(built.with_name(built.name.replace(".onnx", suffix)), dst.with_name(dst.name.replace(".onnx", suffix)))
    return dst


def _validate_cli(model_dir: Path, candidate: Path, json_path: Path):
    return CliRunner().invoke(cli, ["validate", "--reference", str(model_dir), "--candidate", str(candidate), *DATA, "--json", str(json_path)])


def _check_pass(report: dict, layers: int) -> None:
    val = report["validation"]
    assert report["passed"] and val["passed"], report["output"]
    assert val["tolerance"]["rule"] == "scaled"
    assert val["outputs"]["logits"]["used"] < 0.1  # a correct build sits far inside its tolerance
    assert len(val["outputs"]) == 1 + 2 * layers and all(o["passed"] for o in val["outputs"].values())
    data = val["input_data"]
    assert not data["generated"] and data["source"].startswith("2 held-out windows of data:mlpdeploy-notes.jsonl")
    assert [f["name"] for f in data["feeds"]] == ["prefill", "decode"]
    assert data["feeds"][1]["shapes"]["past_key_values.0.key"] == [2, 3, 64, 64]
    assert val["task"]["agreement"] == 1.0 and abs(val["task"]["relative_delta"]) < 1e-4
    text = " ".join(report["output"].split())
    assert text.index("PASS:") < text.index("task: perplexity") < text.index("worst layer")
    assert f"of {layers}" in text and "present.1.key" not in text
    html = Path(report["artifacts"]["report_html"]).read_text()
    assert f"present.*.key (×{layers}, worst: layer" in html


def _check_fault(result, json_path: Path, model_layers: int) -> dict:
    assert result.exit_code == 1, result.output
    val = json.loads(json_path.read_text())
    assert not val["passed"] and not val["outputs"]["logits"]["passed"]
    assert val["outputs"]["logits"]["used"] > 1.5  # well past the tolerance, not at its edge
    assert "FAIL: outputs drifted past tolerance (logits" in " ".join(result.output.split())
    assert val["task"]["agreement"] > 0.9  # the fault barely moves the argmax: the elementwise check is what catches it
    return val


@pytest.fixture(scope="module")
def small_build(smollm2_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2-4l") / "out"
    return smollm2_small, _compile(smollm2_small, out)


def test_correct_fp32_build_of_a_real_decoder_passes(small_build):
    _, report = small_build
    _check_pass(report, layers=4)


def test_planted_fault_in_one_mlp_fails(small_build, tmp_path):
    model_dir, report = small_build
    bad = _planted_fault(Path(report["artifacts"]["build_model"]), tmp_path / "fault.onnx", layer=1)
    val = _check_fault(_validate_cli(model_dir, bad, tmp_path / "val.json"), tmp_path / "val.json", 4)
    assert val["outputs"]["present.0.key"]["passed"] and not val["outputs"]["present.3.key"]["passed"]  # before vs after the fault


@pytest.mark.slow
def test_full_smollm2_correct_build_passes_and_planted_fault_fails(smollm2_full, tmp_path):
    report = _compile(smollm2_full, tmp_path / "out")
    _check_pass(report, layers=30)
    bad = _planted_fault(Path(report["artifacts"]["build_model"]), tmp_path / "fault.onnx", layer=15)
    shutil.rmtree(tmp_path / "out")
    _check_fault(_validate_cli(smollm2_full, bad, tmp_path / "val.json"), tmp_path / "val.json", 30)
