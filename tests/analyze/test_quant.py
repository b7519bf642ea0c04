"""`analyze --quant`: the proxy equals its definition computed by hand, the planner's choice fits
its budget on held-out samples (re-measured independently), level 0/4 per site, the plan
compiles and validates, CLI errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mlpdeploy.analyze import AnalyzeOptions, analyze_model
from mlpdeploy.analyze.quant_choices import FLOAT32, Choice
from mlpdeploy.analyze.quant_planner import Option, lower_hull, plan_path
from mlpdeploy.cli import cli
from mlpdeploy.model import load_model
from mlpdeploy.model.torch_run import first_output_fn
from mlpdeploy.quant import parse_format, quantized_linears
from mlpdeploy.quant.torch_apply import dequantized_weight, int8_blocks


@pytest.fixture(scope="module")
def tiny_plan():
    bundle = load_model("llama-tiny")
    plan = analyze_model(bundle, AnalyzeOptions({"quant": "nvfp4,int4"}, samples=8, max_metric_delta=0.02, relative_budget=True,
                                                eval_samples=16))
    return bundle, plan


def test_every_linear_measured_in_every_choice(tiny_plan):
    bundle, plan = tiny_plan
    data = plan.analyses["quant"]
    linears = [n for n, m in bundle.module.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(data["layers"]) == sorted(linears) and data["formats"] == ["nvfp4", "int4"]
    assert data["choices"] == ["nvfp4/L4", "int4/L0", "int4/L4", "int8/L4"] and data["fallback"] == ["int8"]
    assert data["objective"] == "cross-entropy"
    for layer in data["layers"].values():
        for cell in layer["choices"].values():
            assert 0 < cell["output_error"] < 0.5 and cell["loss_growth"] > 0 and cell["bytes"] > 0
    table = plan.tables[0]
    assert len(table["rows"]) == len(linears) and table["heatmap"]["columns"] == data["choices"]


def test_proxy_equals_its_definition(tiny_plan):
    """One cell by hand: g = ∂(summed cross-entropy)/∂y of that linear's output on the labeled
    calibration samples, Δy = int8(x)·Wqᵀ − x·Wᵀ; growth = ½ Σ_positions (g·Δy)² / tokens."""
    bundle, plan = tiny_plan
    path = "layers.1.mlp.down_proj"
    module = bundle.module
    linear = dict(module.named_modules())[path]
    (batch,) = list(bundle.task.labeled_calibration_batches(1, 8, 0))
    seen = {}

    def keep(_m, args, out):
        seen["x"] = args[0].detach()
        out.retain_grad()
        seen["y"] = out

    handle = linear.register_forward_hook(keep)
    try:
        logits = module(torch.from_numpy(batch["input_ids"]))
        torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(batch["targets"]).reshape(-1),
                                          reduction="sum").backward()
    finally:
        handle.remove()
        module.zero_grad(set_to_none=True)
    g, x, y = seen["y"].grad.double(), seen["x"], seen["y"].detach()
    wq = dequantized_weight(linear.weight, parse_format("int4"))
    with torch.no_grad():
        dy = (torch.nn.functional.linear(int8_blocks(x, 32), wq) - y).double()
    expected = 0.5 * float(((g * dy).sum(-1) ** 2).sum()) / batch["targets"].size
    cell = plan.analyses["quant"]["layers"][path]["choices"]["int4/L4"]
    assert cell["loss_growth"] == pytest.approx(expected, rel=1e-3)
    assert cell["output_error"] == pytest.approx(float(dy.norm() / y.double().norm()), rel=1e-4)


def test_plan_fits_its_budget_on_held_out_samples(tiny_plan):
    bundle, plan = tiny_plan
    quant = plan.analyses["quant"]["plan"]
    predicted = plan.predicted
    assert plan.budget == {"metric": "perplexity", "max_delta": 0.02, "relative": True}
    assert predicted["relative_delta"] <= 0.02 and predicted["heldout_samples"] == 16
    summary = predicted["quantization"]
    assert summary["quantized_layers"] == len(quant["choices"]) > 0
    assert summary["linear_weight_bytes"] < summary["float32_linear_weight_bytes"]
    assert 1 <= len(quant["probes"]) <= 8 and any(p["fits"] for p in quant["probes"])
    # re-measured independently: the chosen sites (int8 inputs at level 4) on the first 16 eval samples
    (entry,) = plan.passes
    assert entry["name"] == "quantize-weights" and set(entry["sites"]) == set(quant["choices"])
    sites = {p: parse_format(s["format"]) for p, s in entry["sites"].items()}
    int8 = {p: sites[p].block for p, s in entry["sites"].items() if s["accuracy_level"] == 4}
    names = [s.name for s in bundle.inputs]
    base = bundle.task.evaluate(first_output_fn(bundle.module, names), limit=16)["value"]
    with quantized_linears(bundle.module, sites, int8):
        value = bundle.task.evaluate(first_output_fn(bundle.module, names), limit=16)["value"]
    assert base == pytest.approx(predicted["reference"], rel=1e-6)
    assert value == pytest.approx(predicted["value"], rel=1e-5) and (value - base) / base <= 0.02
    assert plan.tables[1]["title"].startswith("Quantization plan")


def test_analysis_is_deterministic_for_a_seed():
    bundle = load_model("llama-tiny")
    options = AnalyzeOptions({"quant": "int4"}, samples=8, seed=3, max_metric_delta=0.01, relative_budget=True, eval_samples=8)
    first, second = (_without_timing(analyze_model(bundle, options).to_json()) for _ in range(2))
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def _without_timing(value):
    """The plan without what a clock measured (the proxy's seconds, also in a table title)."""
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return re.sub(r"\(\d+(\.\d+)? s\)", "(s)", value) if isinstance(value, str) else value


def _opt(fmt: str | None, level: int, nbytes: int, growth: float) -> Option:
    return Option(Choice(parse_format(fmt) if fmt else None, level), nbytes, growth)


def test_hull_keeps_only_choices_some_price_would_pick():
    cheap, mid, dominated, bad_mid, float32 = (_opt("int4", 4, 10, 1.0), _opt("nvfp4", 4, 20, 0.5), _opt("int4asym", 0, 25, 0.6),
                                               _opt("mxfp4", 4, 30, 0.45), Option(FLOAT32, 40, 0.0))
    assert lower_hull([float32, dominated, mid, cheap, bad_mid]) == [cheap, mid, float32]  # bad_mid lies above the chord


def test_path_runs_from_smallest_to_float_cheapest_bytes_per_growth_first():
    hulls = {"a": [_opt("int4", 4, 10, 1.0), Option(FLOAT32, 40, 0.0)],  # 30 bytes buy 1.0
             "b": [_opt("int4", 4, 10, 0.1), Option(FLOAT32, 40, 0.0)]}  # 30 bytes buy 0.1
    path = plan_path(hulls)
    assert [sorted((k, o.bytes) for k, o in p.items()) for p in path] == [[("a", 10), ("b", 10)], [("a", 40), ("b", 10)],
                                                                          [("a", 40), ("b", 40)]]


@pytest.mark.slow
def test_plan_compiles_and_validates(tiny_plan, tmp_path):
    from mlpdeploy.compile import CompileOptions, compile_model

    bundle, plan = tiny_plan
    plan.save(tmp_path / "plan.json")
    report = compile_model("llama-tiny", tmp_path / "out", CompileOptions(plan=tmp_path / "plan.json", task_limit=16))
    assert report["passed"], report["validation"]
    rewritten = report["stages"]["rewrite"]["passes"]
    (quant,) = [v for k, v in rewritten.items() if k.startswith("quantize-weights")]
    assert set(quant["sites"]) == set(plan.analyses["quant"]["plan"]["choices"])
    levels = {s: info["accuracy_level"] for s, info in quant["sites"].items()}
    assert levels == {p: c["accuracy_level"] for p, c in plan.passes[0]["sites"].items()}
    task = report["validation"]["task"]
    assert task["relative_budget"] is True and task["max_metric_delta"] == 0.02 and task["passed"]
    assert task["candidate"] == pytest.approx(plan.predicted["value"], rel=2e-3)  # ONNX Runtime reproduces the torch prediction
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


def test_level_choice_is_per_site():
    from mlpdeploy.analyze.quant_planner import LEVEL_TOLERANCE, level_choice

    close = [_opt("int4", 0, 10, 1.0), _opt("int4", 4, 10, 1.0 + LEVEL_TOLERANCE / 2)]
    far = [_opt("int4", 0, 10, 1.0), _opt("int4", 4, 10, 1.0 + 2 * LEVEL_TOLERANCE)]
    assert [o.choice.level for o in level_choice(close)] == [4] and [o.choice.level for o in level_choice(far)] == [0]
    assert np.isfinite(LEVEL_TOLERANCE)
