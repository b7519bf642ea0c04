"""plan.json: written by analyze, read by rewrite/compile, refused for another model."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mlpdeploy.analyze import AnalyzeOptions, analyze_model, load_plan
from mlpdeploy.analyze.plan import passes_with_plan
from mlpdeploy.cli import cli
from mlpdeploy.compile import CompileOptions, compile_model
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.export import export_model
from mlpdeploy.model import load_model
from mlpdeploy.passes import pass_report, rewrite_model


def files_in(directory):
    return sorted(p.name for p in directory.rglob("*")) if directory.exists() else []


@pytest.fixture(scope="module")
def llama_tiny_plan(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    analyze_model("llama-tiny", AnalyzeOptions({"layer-stats": None}, samples=8)).save(path)
    return path


def _with_passes(src, dst, passes):
    data = json.loads(src.read_text())
    data["passes"] = passes
    dst.write_text(json.dumps(data))
    return dst


def test_schema(llama_tiny_plan):
    data = json.loads(llama_tiny_plan.read_text())
    assert data["mlpdeploy_plan"] == 1 and data["model"] == "llama-tiny"
    assert set(data) >= {"created_with", "calibration", "budget", "analyses", "passes", "predicted", "artifacts"}
    assert set(data["created_with"]) == {"mlpdeploy", "torch", "onnx"}
    assert set(data["analyses"]["layer-stats"]) == {"layers.0.mlp", "layers.1.mlp"}
    assert load_plan(llama_tiny_plan).to_json() == data


def test_plan_sites_restrict_a_pass(llama_tiny_plan, tmp_path):
    plan = _with_passes(llama_tiny_plan, tmp_path / "p.json", [{"name": "fuse-gated-mlp", "options": {}, "sites": {"layers.1.mlp": {}}}])
    exported = export_model(load_model("llama-tiny"), tmp_path / "m.onnx")
    result = rewrite_model(exported.model_path, tmp_path / "m.opt.onnx", passes_with_plan(plan, [], exported.model_path))
    report = result.report("fuse-gated-mlp")
    assert report["rewritten"] == 1 and list(report["sites"]) == ["layers.1.mlp"]
    assert list(report["skipped"].values()) == ["module layers.0.mlp is not among the plan's sites"]


def test_plan_for_another_model_is_refused(llama_tiny_plan, tmp_path):
    with pytest.raises(MlpdeployError, match=r"^plan .* was made for model 'llama-tiny', not 'opt-relu-tiny'; run `mlpdeploy analyze opt-relu-tiny"):
        compile_model("opt-relu-tiny", tmp_path / "out", CompileOptions(plan=llama_tiny_plan))
    assert files_in(tmp_path) == []
    exported = export_model(load_model("opt-relu-tiny"), tmp_path / "opt.onnx")
    result = CliRunner().invoke(cli, ["rewrite", str(exported.model_path), "-o", str(tmp_path / "x.onnx"), "--plan", str(llama_tiny_plan)])
    assert result.exit_code == 2 and "was made for model 'llama-tiny', not 'opt-relu-tiny'" in result.output
    assert not (tmp_path / "x.onnx").exists()


def test_plan_naming_missing_sites_is_refused(llama_tiny_plan, tmp_path):
    plan = _with_passes(llama_tiny_plan, tmp_path / "p.json", [{"name": "fuse-gated-mlp", "options": {}, "sites": {"layers.7.mlp": {}}}])
    with pytest.raises(MlpdeployError, match="names site 'layers.7.mlp', which llama-tiny does not have"):
        compile_model("llama-tiny", tmp_path / "out", CompileOptions(plan=plan))


@pytest.mark.parametrize("content, message", [
    (None, "not found; make one with `mlpdeploy analyze MODEL"),
    ("{not json", "is not valid JSON"),
    ('{"model": "x"}', "is not an mlpdeploy plan"),
    ('{"mlpdeploy_plan": 1, "model": "x"}', "does not follow the plan schema"),
])
def test_bad_plan_files(tmp_path, content, message):
    path = tmp_path / "plan.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MlpdeployError, match=message):
        load_plan(path)


def test_unknown_pass_in_plan_is_refused(llama_tiny_plan, tmp_path):
    plan = _with_passes(llama_tiny_plan, tmp_path / "p.json", [{"name": "no-such-pass", "options": {}}])
    with pytest.raises(MlpdeployError, match="^unknown pass 'no-such-pass'"):
        compile_model("llama-tiny", tmp_path / "out", CompileOptions(plan=plan))
    assert files_in(tmp_path / "out") == []


def test_analyze_then_compile_with_the_plan(tmp_path):
    """The issue's acceptance path: `analyze llama-small --layer-stats -o plan.json`, then `compile llama-small --plan plan.json`."""
    plan = tmp_path / "plan.json"
    result = CliRunner().invoke(cli, ["analyze", "llama-small", "--layer-stats", "--samples", "16", "-o", str(plan)])
    assert result.exit_code == 0, result.output
    assert "MLP layer statistics" in result.output and "layers.3.mlp" in result.output
    result = CliRunner().invoke(cli, ["compile", "llama-small", "--plan", str(plan), "--pass", "fuse-gated-mlp",
                                      "--task-samples", "16", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["plan"]["analyses"] == ["layer-stats"] and report["artifacts"]["plan"].endswith("plan.json")
    assert pass_report(report["stages"]["rewrite"]["passes"], "fuse-gated-mlp")["rewritten"] == 4
    assert "MLP layer statistics" in (tmp_path / "out" / "report.html").read_text()


def test_analyze_cli_errors(tmp_path):
    result = CliRunner().invoke(cli, ["analyze", "llama-tiny", "-o", str(tmp_path / "plan.json")])
    assert result.exit_code == 2 and "choose at least one analysis: --layer-stats" in result.output
    assert files_in(tmp_path) == []
