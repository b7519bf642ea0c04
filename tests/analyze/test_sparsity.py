"""`--sparsity`: activity and unions equal a direct hook computation, the predictor's recall is
measured on held-out tokens, gated thresholds hit their target sparsity, and the planner's plan
(with predictors saved beside it) rewrites a graph that validates against the same torch selection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mlpdeploy.analyze import AnalyzeOptions, analyze_model
from mlpdeploy.analyze.plan import load_plan, passes_with_plan
from mlpdeploy.analyze.predictor import k_for_recall, recall_curve, svd_predictor
from mlpdeploy.analyze.sparse_planner import LEVELS
from mlpdeploy.export import export_model
from mlpdeploy.model import load_model
from mlpdeploy.model.sparsity import SparseSite, sparsified
from mlpdeploy.passes import rewrite_model
from mlpdeploy.validate import ValidateOptions, validate


@pytest.fixture(scope="module")
def opt_tiny():
    return load_model("opt-relu-tiny")


def test_relu_activity_and_unions(opt_tiny):
    plan = analyze_model(opt_tiny, AnalyzeOptions({"sparsity": None}, samples=8))
    sites = plan.analyses["sparsity"]["sites"]
    assert set(sites) == {"layers.0", "layers.1"}
    feed = torch.from_numpy(next(iter(opt_tiny.task.calibration_batches(1, 8)))["input_ids"])
    seen = []
    handle = opt_tiny.module.layers[1].fc2.register_forward_pre_hook(lambda _m, args: seen.append(args[0] > 0))
    with torch.no_grad():
        opt_tiny.module(feed)
    handle.remove()
    s = sites["layers.1"]
    assert s["kind"] == "relu" and s["hidden"] == 256 and s["tokens"] == 8 * 128
    assert s["active_fraction"] == pytest.approx(float(seen[0].float().mean()), abs=1e-6)
    assert s["union"]["1"] == pytest.approx(s["active_fraction"], abs=1e-6)
    assert s["union"]["1"] <= s["union"]["4"] <= s["union"]["16"] <= 1
    ks = [s["predictor"]["k_for_recall"][str(r)] for r, _ in LEVELS]
    assert ks == sorted(ks) and 1 <= ks[0] and ks[-1] <= 256
    assert plan.passes == [] and plan.tables[0]["columns"][0] == "MLP"


def test_recall_curve_and_k():
    x = torch.eye(4)
    active = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.bool)
    p_a, p_b = np.eye(4, 3, dtype=np.float32), np.eye(3, dtype=np.float32)  # token i scores neuron i best (token 3: ties)
    curve = recall_curve(x, active, p_a, p_b)
    assert curve.tolist() == pytest.approx([4 / 5, 1.0, 1.0])  # token 3 has all-zero scores: ties go to 0, 1, 2
    assert k_for_recall(curve, 0.8) == 1 and k_for_recall(curve, 0.9) == 2 and k_for_recall(np.array([0.5, 0.7]), 0.9) == 2
    w = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    a, b = svd_predictor(w, 5)
    np.testing.assert_allclose(a @ b, w.T, atol=1e-5)


def test_gated_thresholds_hit_their_sparsity():
    bundle = load_model("llama-tiny")
    plan = analyze_model(bundle, AnalyzeOptions({"sparsity": None}, samples=8))
    s = plan.analyses["sparsity"]["sites"]["layers.0.mlp"]
    assert s["kind"] == "gated" and s["activation"] == "silu"
    ts = [s["thresholds"][str(x)] for x in (0.2, 0.4, 0.5, 0.7)]
    assert ts == sorted(ts)
    gate = []
    handle = bundle.module.layers[0].mlp.gate_proj.register_forward_hook(lambda _m, _a, out: gate.append(out))
    with torch.no_grad():
        for feed in bundle.task.calibration_batches(1, 8):
            bundle.module(torch.from_numpy(feed["input_ids"]))
    handle.remove()
    share = float((torch.nn.functional.silu(gate[0]).abs() > s["thresholds"]["0.5"]).float().mean())
    assert share == pytest.approx(0.5, abs=0.02)
    assert 0.5 - 0.02 <= s["union"]["1"] <= s["union"]["4"] <= s["union"]["16"]


def test_planner_plan_rewrites_and_validates(opt_tiny, tmp_path):
    """A budget any level fits: the sparsest level is planned; its plan (+ predictors file) rewrites the
    graph into SparseMLP nodes that equal the torch model computing the same neurons."""
    plan = analyze_model(opt_tiny, AnalyzeOptions({"sparsity": None}, samples=8, max_metric_delta=1e9, eval_samples=4))
    planner = plan.analyses["sparsity"]["planner"]
    assert planner["chosen"]["level"] == 0 and len(planner["steps"]) == 1
    entry = plan.passes[0]
    assert entry["name"] == "sparse-mlp" and set(entry["sites"]) == {"layers.0", "layers.1"}
    site = entry["sites"]["layers.0"]
    assert site["mode"] == "topk" and site["recall"] == LEVELS[0][0] and site["up"] == "layers.0.fc1"
    plan.save(tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text())["artifacts"] == {"sparse-mlp": "plan.sparse-mlp.safetensors"}
    exported = export_model(opt_tiny, tmp_path / "m.onnx")
    specs = passes_with_plan(tmp_path / "plan.json", [], exported.model_path)
    assert specs[0].options["artifact"] == str(tmp_path / "plan.sparse-mlp.safetensors")
    result = rewrite_model(exported.model_path, tmp_path / "m.sparse.onnx", specs)
    assert result.op_counts_after["mlpdeploy::SparseMLP"] == 2 and "Relu" not in result.op_counts_after
    details = result.passes[0]["sites"]["layers.0"]
    assert details["k"] == site["k"] and details["rank"] == site["rank"]
    report = validate(opt_tiny, result.model_path, ValidateOptions(dims={"batch": 2, "seq": 9}))
    assert report.passed and set(report.reference_overrides) == {"layers.0.fc2", "layers.1.fc2"}
    # recall= picks each planned site's k for that recall from the plan's held-out measurements.
    loaded = load_plan(tmp_path / "plan.json")
    specs = loaded.pass_specs(tmp_path)
    specs[0].options["recall"] = 0.99
    again = rewrite_model(exported.model_path, tmp_path / "m.recall.onnx", specs)
    chosen = again.passes[0]["sites"]["layers.1"]["k"]
    assert chosen == plan.analyses["sparsity"]["sites"]["layers.1"]["predictor"]["k_for_recall"]["0.99"]


def test_sparsified_masks_each_token_to_its_k(opt_tiny):
    rng = np.random.default_rng(0)
    p_a, p_b = rng.standard_normal((64, 4)).astype(np.float32), rng.standard_normal((4, 256)).astype(np.float32)
    site = SparseSite("topk", "layers.0.fc1", "layers.0.fc2", k=10, p_a=p_a, p_b=p_b)
    seen = []
    handle = opt_tiny.module.layers[0].fc2.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad(), sparsified(opt_tiny.module, [site]):
        opt_tiny.module(torch.randint(0, 256, (2, 7)))
    handle.remove()
    assert ((seen[0] != 0).sum(-1) <= 10).all()
    assert SparseSite.from_json(site.to_json()).to_json() == site.to_json()


def test_no_task_or_no_mlp_is_one_line_error(tmp_path):
    from pathlib import Path

    from mlpdeploy.errors import MlpdeployError

    spec = f"{Path(__file__).parent.parent / 'fixtures' / 'tiny_mlp.py'}:build"
    plan = analyze_model(spec, AnalyzeOptions({"sparsity": None}, samples=8))  # measured, no task needed
    assert plan.analyses["sparsity"]["sites"]["mlp"]["kind"] == "gated"
    with pytest.raises(MlpdeployError, match=r"has no evaluation task, so --max-metric-delta cannot judge sparsity; give it --data FILE"):
        analyze_model(spec, AnalyzeOptions({"sparsity": None}, samples=8, max_metric_delta=0.1))
    with pytest.raises(MlpdeployError, match=r"found no MLPs with separate up \(and gate\) projections"):
        analyze_model("kan-tiny", AnalyzeOptions({"sparsity": None}, samples=8))
