"""`analyze --quant`: per-linear sensitivity equals a direct computation, the planner's choice
fits its budget on held-out samples, the plan compiles and validates, CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mlpdeploy.analyze import AnalyzeOptions, analyze_model
from mlpdeploy.cli import cli
from mlpdeploy.model import load_model
from mlpdeploy.model.torch_run import first_output_fn
from mlpdeploy.quant import parse_format, quantized_linears


@pytest.fixture(scope="module")
def tiny_plan():
    bundle = load_model("llama-tiny")
    plan = analyze_model(bundle, AnalyzeOptions({"quant": "nvfp4,int4"}, samples=8, max_metric_delta=0.02, relative_budget=True,
                                                eval_samples=16))
    return bundle, plan


def test_every_linear_measured_in_every_format(tiny_plan):
    bundle, plan = tiny_plan
    data = plan.analyses["quant"]
    linears = [n for n, m in bundle.module.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(data["layers"]) == sorted(linears) and data["formats"] == ["nvfp4", "int4"]
    assert data["metric"] == "perplexity" and data["calibration_samples"] == 8
    for layer in data["layers"].values():
        for cell in layer["formats"].values():
            assert 0 < cell["output_error"] < 0.5 and np.isfinite(cell["delta"])
    table = plan.tables[0]
    assert len(table["rows"]) == len(linears) and table["heatmap"]["columns"] == ["nvfp4", "int4"]
    assert len(table["heatmap"]["values"]) == len(linears)


def test_delta_equals_a_direct_evaluation(tiny_plan):
    """One cell recomputed by hand: only that linear quantized, the task metric on the same
    labeled calibration samples."""
    bundle, plan = tiny_plan
    data = plan.analyses["quant"]
    path = "layers.1.mlp.down_proj"
    names = [s.name for s in bundle.inputs]
    batches = list(bundle.task.labeled_calibration_batches(1, 8, 0))
    base = bundle.task.evaluate_batches(first_output_fn(bundle.module, names), iter(batches))["value"]
    with quantized_linears(bundle.module, {path: parse_format("int4")}):
        value = bundle.task.evaluate_batches(first_output_fn(bundle.module, names), iter(batches))["value"]
    assert data["calibration_baseline"] == pytest.approx(base, rel=1e-6)
    assert data["layers"][path]["formats"]["int4"]["delta"] == pytest.approx(value - base, rel=1e-4, abs=1e-7)


def test_plan_fits_its_budget_on_held_out_samples(tiny_plan):
    bundle, plan = tiny_plan
    quant = plan.analyses["quant"]["plan"]
    predicted = plan.predicted
    assert plan.budget == {"metric": "perplexity", "max_delta": 0.02, "relative": True}
    assert predicted["relative_delta"] <= 0.02 and predicted["heldout_samples"] == 16
    assert predicted["quantized_layers"] == len(quant["choices"]) > 0
    assert predicted["linear_weight_bytes"] < predicted["float32_linear_weight_bytes"]
    # re-check independently: the chosen sites with int8 activations on the first 16 eval samples
    sites = {p: parse_format(f) for p, f in quant["choices"].items()}
    names = [s.name for s in bundle.inputs]
    base = bundle.task.evaluate(first_output_fn(bundle.module, names), limit=16)["value"]
    with quantized_linears(bundle.module, sites, {p: f.block for p, f in sites.items()}):
        value = bundle.task.evaluate(first_output_fn(bundle.module, names), limit=16)["value"]
    assert value == pytest.approx(predicted["value"], rel=1e-5) and (value - base) / base <= 0.02
    (entry,) = plan.passes
    assert entry["name"] == "quantize-weights" and set(entry["sites"]) == set(quant["choices"])
    assert plan.tables[1]["title"].startswith("Quantization plan")


@pytest.mark.slow
def test_plan_compiles_and_validates(tiny_plan, tmp_path):
    from mlpdeploy.compile import CompileOptions, compile_model

    bundle, plan = tiny_plan
    plan.save(tmp_path / "plan.json")
    report = compile_model("llama-tiny", tmp_path / "out", CompileOptions(plan=tmp_path / "plan.json", task_limit=16))
    assert report["passed"], report["validation"]
    rewritten = report["stages"]["rewrite"]["passes"]
    (quant,) = [v for k, v in rewritten.items() if k.startswith("quantize-weights")]
    assert set(quant["sites"]) <= set(plan.analyses["quant"]["plan"]["choices"]) | {s.rsplit(".", 1)[0] for s in quant["sites"]}
    task = report["validation"]["task"]
    assert task["relative_budget"] is True and task["max_metric_delta"] == 0.02 and task["passed"]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<svg" in html and "Quantization sensitivity" in html


def test_cli_writes_the_plan_and_refuses_bad_formats(tmp_path):
    runner = CliRunner()
    out = tmp_path / "plan.json"
    result = runner.invoke(cli, ["analyze", "llama-tiny", "--quant", "int5", "--samples", "8", "-o", str(out)])
    assert result.exit_code != 0 and "int5" in result.output and not out.exists()
    result = runner.invoke(cli, ["analyze", "llama-tiny", "--quant", "mxfp4", "--samples", "8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["analyses"]["quant"]["formats"] == ["mxfp4"] and data["passes"] == []
