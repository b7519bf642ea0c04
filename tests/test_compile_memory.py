"""compile reports each stage's time and peak resident memory (and the steps inside it) in
report.json, report.html and its printed summary; weights past the external-data threshold
travel in `<name>.data` files through every stage, per-layer validation included."""

from __future__ import annotations

import json

from click.testing import CliRunner

from mlpdeploy.cli import cli
from mlpdeploy.compile import CompileOptions, compile_model, weight_bytes
from mlpdeploy.model import load_model

STEPS = {"export": ["torch.onnx.export", "save"], "rewrite": ["load", "save"], "build": ["ort fusions", "onnxruntime optimize"],
         "validate": ["outputs", "layers"]}


def test_report_and_summary_give_each_stage_peak_memory_and_its_steps(tiny_spec, tmp_path):
    result = CliRunner().invoke(cli, ["compile", tiny_spec, "-o", str(tmp_path / "out")], terminal_width=200)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["load", "export", "rewrite", "build", "validate"]
    for name, stage in stages.items():
        assert stage["peak_rss_mib"] >= max(stage["rss_start_mib"], stage["rss_end_mib"]) > 50, name
        for step, record in stage.get("steps", {}).items():
            assert stage["peak_rss_mib"] >= record["peak_rss_mib"] > 0, (name, step)
    for name, steps in STEPS.items():
        assert list(stages[name]["steps"])[:len(steps)] == steps, (name, list(stages[name]["steps"]))
    memory = report["memory"]
    assert memory["peak_rss_mib"] == max(s["peak_rss_mib"] for s in stages.values())
    assert stages[memory["peak_stage"]]["peak_rss_mib"] == memory["peak_rss_mib"]
    weights = weight_bytes(load_model(tiny_spec).module)
    assert memory["weights_mib"] == round(weights / 2**20, 1)
    assert memory["peak_over_weights"] == round(memory["peak_rss_mib"] * 2**20 / weights, 2)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "peak RSS MiB" in html and "torch.onnx.export" in html and "of weights" in html
    # the printed summary: one row per stage and step, with its peak and its multiple of the weights
    assert "peak RSS MiB" in result.output and "x weights" in result.output
    rows = {line.split("│")[1].strip() for line in result.output.splitlines() if line.count("│") >= 4}
    assert {"load", "export", "rewrite", "build", "validate", "torch.onnx.export", "ort fusions"} <= rows


def test_external_data_through_every_stage_of_a_cached_decoder(tmp_path, monkeypatch):
    """With the threshold lowered, every model file keeps its weights in `<name>.data`: the
    rewrite reads them memory-mapped, ONNX Runtime builds and runs from them, and the per-layer
    comparison runs the rewritten graph from its data file."""
    from mlpdeploy import onnx_io

    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 1024)
    out = tmp_path / "out"
    report = compile_model("llama-tiny", out, CompileOptions(kv_cache=True, task_limit=8))  # the task metric is not under test here
    assert report["passed"], report["validation"]["outputs"]
    for name in ("model.onnx", "model.opt.onnx", "model.ort.onnx"):
        assert (out / f"{name}.data").stat().st_size > 100_000, name
    layers = report["validation"]["layers"]
    assert len(layers["errors"]) >= 2 and all(e["max_abs"] <= 1e-4 for e in layers["errors"].values())
    assert report["stages"]["build"]["fusions"]["fusions"]["GroupQueryAttention"] >= 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging directory left behind"
