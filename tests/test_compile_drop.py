"""compile with drop-layers: validation proves the rewrite against the torch model edited the
same way and judges the task metric against the unedited one, with the budget from the command
line or the plan; plans compose (one plan.json, passes in order)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mlpdeploy.analyze import AnalyzeOptions, analyze_model
from mlpdeploy.analyze.plan import passes_with_plan
from mlpdeploy.cli import cli
from mlpdeploy.compile import CompileOptions, compile_model
from mlpdeploy.passes import parse_pass_spec, pass_report, rewrite_model
from mlpdeploy.validate import ValidateOptions, validate


def test_budget_on_the_command_line(tmp_path):
    """vit-small without its first block: outputs match the edited torch model exactly, but
    accuracy falls past a tight budget (exit 1, saying which); a relative budget of 100% passes."""
    args = ["compile", "vit-small", "--pass", "drop-layers:scopes=blocks.0", "--task-samples", "64"]
    result = CliRunner().invoke(cli, [*args, "--max-metric-delta", "0.001", "-o", str(tmp_path / "tight")])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "FAIL: the task metric degraded past its budget (accuracy -" in text and "budget 0.001)" in text
    assert "reference: the torch model edited as the approximate rewrite computes (blocks.0 → identity)" in text
    report = json.loads((tmp_path / "tight" / "report.json").read_text())
    assert all(o["passed"] for o in report["validation"]["outputs"].values())
    # `validate` on the built artifact edits the reference from its manifest too; a relative budget of 100% fits
    artifact = tmp_path / "tight" / "model.ort.onnx"
    result = CliRunner().invoke(cli, ["validate", "--reference", "vit-small", "--candidate", str(artifact), "--max-metric-delta", "100%",
                                      "--task-samples", "64", "--json", str(tmp_path / "val.json")])
    assert result.exit_code == 0, result.output
    validation = json.loads((tmp_path / "val.json").read_text())
    assert validation["reference_overrides"] == {"blocks.0": "identity"} and all(o["passed"] for o in validation["outputs"].values())
    assert validation["task"]["relative_budget"] is True and validation["task"]["max_metric_delta"] == 1.0 and validation["task"]["passed"]


@pytest.mark.parametrize("order", ["fuse-then-drop", "drop-then-fuse"])
def test_plan_passes_compose_in_order(tmp_path, zoo_export, order):
    """One plan.json, two passes, run in its order; the rewritten graph validates against the torch
    model edited as its manifest records."""
    bundle, onnx_path = zoo_export("llama-tiny")
    plan = analyze_model(bundle, AnalyzeOptions({"layer-stats": None}, samples=8))
    fuse = {"name": "fuse-gated-mlp", "options": {}, "sites": None}
    drop = {"name": "drop-layers", "options": {}, "sites": {"layers.1.mlp": {"kind": "mlp"}}}
    plan.passes = [fuse, drop] if order == "fuse-then-drop" else [drop, fuse]
    specs = passes_with_plan(plan.save(tmp_path / "plan.json"), [], onnx_path)
    result = rewrite_model(onnx_path, tmp_path / "model.opt.onnx", specs)
    assert [r["pass"] for r in result.passes] == [p["name"] for p in plan.passes]
    assert result.op_counts_after["mlpdeploy::GatedMLP"] == 1  # one MLP left to fuse, or one fused MLP left
    report = validate(bundle, result.model_path, ValidateOptions(layers=True))
    assert report.passed, report.to_json()
    dropped = "layers.1.mlp" if order == "fuse-then-drop" else "layers.1.mlp.down_proj"  # the fused node's scope is the MLP's
    assert report.reference_overrides == {dropped: "zero"}
    assert report.layers["errors"]["layers.0.mlp"]["max_abs"] < 1e-4


def test_budget_from_the_plan_and_report_html(tmp_path):
    """A plan's budget is what compile checks when the command line gives none; report.html
    shows the plan's table, its curve and how the reference was edited."""
    plan = analyze_model("vit-small", AnalyzeOptions({"redundancy": None}, samples=8, max_metric_delta=0.05, eval_samples=32))
    path = plan.save(tmp_path / "plan.json")
    report = compile_model("vit-small", tmp_path / "out", CompileOptions(plan=path, task_limit=32))
    task = report["validation"]["task"]
    assert task["max_metric_delta"] == 0.05 and task["relative_budget"] is False
    dropped = plan.analyses["redundancy"]["planner"]["dropped"]
    assert dropped == ["blocks.2.mlp", "blocks.3", "blocks.1"]  # on 32 samples; blocks.3 replaced its two sublayers
    # what the planner kept in torch fits the same held-out samples again, run in ONNX Runtime
    assert task["passed"] and report["passed"] and task["candidate"] == pytest.approx(plan.analyses["redundancy"]["planner"]["final"])
    assert list(pass_report(report["stages"]["rewrite"]["passes"], "drop-layers")["dropped"]) == dropped
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Redundancy by depth" in page and 'aria-label="accuracy vs sublayers dropped' in page and "Budget: 0.05 accuracy" in page


@pytest.mark.slow
def test_done_means(tmp_path):
    """The issue's bar: analyze llama-small --redundancy within a budget, compile the plan with the
    KV cache: validated, within budget, fewer cache layers or sublayers. (Speed: bench/drop_layers.py.)"""
    plan = analyze_model("llama-small", AnalyzeOptions({"redundancy": None}, max_metric_delta=0.5))
    assert plan.passes, plan.analyses["redundancy"]["planner"]
    path = plan.save(tmp_path / "plan.json")
    report = compile_model("llama-small", tmp_path / "out", CompileOptions(plan=path, kv_cache=True, passes=[parse_pass_spec("fuse-gated-mlp")]))
    assert report["passed"] and report["validation"]["task"]["passed"], report["validation"]["task"]
    assert report["validation"]["task"]["candidate"] - report["validation"]["task"]["reference"] <= 0.5
