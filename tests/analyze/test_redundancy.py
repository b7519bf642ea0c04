"""`--redundancy`: LLM-Drop scores equal a straightforward hook computation (pre-norm LLaMA,
post-norm BERT), the torch side names the sites the graph pass finds, and the greedy planner
keeps the combined drop within budget on held-out samples."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from mlpdeploy.analyze import AnalyzeOptions, analyze_model
from mlpdeploy.analyze.drop_planner import MAX_TRIES, SCREEN
from mlpdeploy.analyze.sublayers import find_sublayers
from mlpdeploy.cli import cli
from mlpdeploy.model import load_model
from mlpdeploy.model.overrides import overridden
from mlpdeploy.model.torch_run import first_output_fn
from mlpdeploy.onnx_io import load_ir
from mlpdeploy.passes.matching.residual import find_blocks

transformers = pytest.importorskip("transformers", reason="needs the hf extra")


def _one_minus_cos(pairs) -> float:
    """Mean over every token of 1 − cos(x, y), in float64, written out."""
    total, count = 0.0, 0
    for x, y in pairs:
        x, y = x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
        cos = (x * y).sum(-1) / (x.norm(dim=-1) * y.norm(dim=-1))
        total, count = total + float((1 - cos).sum()), count + x.shape[0]
    return total / count


def _capture(module, paths, feeds, inputs=True):
    """path → list (per feed) of its first input (inputs=True) or its output."""
    seen = {p: [] for p in paths}
    modules = dict(module.named_modules())

    def hook(path):
        def fn(_m, args, kwargs, out):
            value = (args or tuple(kwargs.values()))[0] if inputs else (out[0] if isinstance(out, tuple) else out)
            seen[path].append(value.detach())
        return fn

    handles = [modules[p].register_forward_hook(hook(p), with_kwargs=True) for p in paths]
    with torch.no_grad():
        for feed in feeds:
            module(*feed)
    for handle in handles:
        handle.remove()
    return seen


def test_scores_equal_a_hook_computation_pre_norm():
    """LLaMA: X of the attention is input_layernorm's input, of the MLP post_attention_layernorm's."""
    bundle = load_model("llama-tiny")
    plan = analyze_model(bundle, AnalyzeOptions({"redundancy": None}, samples=16))
    scores = plan.analyses["redundancy"]["scores"]
    module = bundle.module
    from mlpdeploy.model.calibration import calibration_batches

    feeds = [(torch.from_numpy(b["input_ids"]),) for b in calibration_batches(bundle, n=2, batch_size=8, seed=0)]
    ins = _capture(module, ["layers.0.input_layernorm", "layers.0.post_attention_layernorm", "layers.1.input_layernorm",
                            "layers.1.post_attention_layernorm", "layers.0", "layers.1"], feeds)
    outs = _capture(module, ["layers.0.self_attn", "layers.0.mlp", "layers.1.self_attn", "layers.1.mlp", "layers.0", "layers.1"], feeds, inputs=False)
    for i in (0, 1):
        attn = _one_minus_cos((x, x + y) for x, y in zip(ins[f"layers.{i}.input_layernorm"], outs[f"layers.{i}.self_attn"]))
        mlp = _one_minus_cos((x, x + y) for x, y in zip(ins[f"layers.{i}.post_attention_layernorm"], outs[f"layers.{i}.mlp"]))
        block = _one_minus_cos(zip(ins[f"layers.{i}"], outs[f"layers.{i}"]))
        assert scores[f"layers.{i}.self_attn"]["score"] == pytest.approx(attn, rel=1e-9, abs=1e-12)
        assert scores[f"layers.{i}.mlp"]["score"] == pytest.approx(mlp, rel=1e-9, abs=1e-12)
        assert scores[f"layers.{i}"]["score"] == pytest.approx(block, rel=1e-9, abs=1e-12)
        assert scores[f"layers.{i}.mlp"]["tokens"] == 16 * 128
    assert plan.analyses["redundancy"]["norm"] == {"layers.0": "pre-norm", "layers.1": "pre-norm"}
    assert plan.passes == [] and plan.tables[0]["columns"] == ["depth", "site", "kind", "1 − cos", "rank"]


def test_scores_equal_a_hook_computation_post_norm(hf_bert_dir):
    """BERT: LN(X + F(X)); X is what the branch reads (the block's input for attention, the
    intermediate dense's input for the MLP), X + F(X) what the LayerNorm after it normalizes."""
    bundle = load_model(str(hf_bert_dir))
    plan = analyze_model(bundle, AnalyzeOptions({"redundancy": None}, samples=8))
    data = plan.analyses["redundancy"]
    assert data["norm"] == {"model.encoder.layer.0": "post-norm", "model.encoder.layer.1": "post-norm"}
    from mlpdeploy.model.calibration import calibration_batches

    feeds = [tuple(torch.from_numpy(b[s.name]) for s in bundle.inputs) for b in calibration_batches(bundle, n=1, batch_size=8, seed=0)]
    layer = "model.encoder.layer.1"
    ins = _capture(bundle.module, [layer, f"{layer}.intermediate.dense"], feeds)
    outs = _capture(bundle.module, [layer, f"{layer}.attention.output.dense", f"{layer}.output.dense"], feeds, inputs=False)
    attn = _one_minus_cos((x, x + y) for x, y in zip(ins[layer], outs[f"{layer}.attention.output.dense"]))
    mlp = _one_minus_cos((x, x + y) for x, y in zip(ins[f"{layer}.intermediate.dense"], outs[f"{layer}.output.dense"]))
    # analyses run Hugging Face attention fused (sdpa), these hooks eager: equal to float32 rounding
    assert data["scores"][f"{layer}.attention"]["score"] == pytest.approx(attn, rel=1e-6)
    assert data["scores"][f"{layer}.output"]["score"] == pytest.approx(mlp, rel=1e-6)
    assert data["scores"][layer]["score"] == pytest.approx(_one_minus_cos(zip(ins[layer], outs[layer])), rel=1e-6)


@pytest.mark.parametrize("model", ["llama-tiny", "opt-relu-tiny", "vit-tiny", pytest.param("mixer-tiny", marks=pytest.mark.slow), "hf-llama", "hf-bert"])
def test_torch_sites_are_the_graph_sites(model, zoo_export, request):
    """What analyze measures (torch module structure) is what drop-layers finds (graph data flow):
    the same sites, kinds and output modules."""
    spec = str(request.getfixturevalue(model.replace("-", "_") + "_dir")) if model.startswith("hf-") else model
    bundle, path = zoo_export(spec)
    torch_side = {(s.site, s.kind, s.output_module) for s in find_sublayers(bundle.module) if s.kind != "block"}
    blocks = find_blocks(load_ir(path).graph)
    graph_side = {(b.site, b.kind, b.output_module) for block in blocks for b in block.branches}
    assert torch_side == graph_side
    assert {s.site for s in find_sublayers(bundle.module) if s.kind == "block"} == {b.path for b in blocks}


def test_planner_keeps_the_combined_drop_within_budget():
    """llama-small: greedy by score, each try re-validated with everything kept so far; what it
    keeps is within budget on the held-out samples, and its predicted delta is measured again."""
    budget = 0.5
    plan = analyze_model("llama-small", AnalyzeOptions({"redundancy": None}, samples=8, max_metric_delta=budget, eval_samples=4))
    data = plan.analyses["redundancy"]
    planner, scores = data["planner"], data["scores"]
    order = [scores[s["site"]]["score"] for s in planner["steps"]]
    assert order == sorted(order) and len(planner["steps"]) >= len(planner["dropped"]) >= 1
    tried = [s for s in planner["steps"] if s["tried"]]
    assert all((s["degradation"] <= budget) == s["accepted"] for s in tried) and len(tried) <= MAX_TRIES
    # passed over without a held-out check only where the second-order estimate is far past the budget
    allowed_growth = math.log1p(budget / planner["baseline"])
    assert all(s["estimate"] > SCREEN * allowed_growth and not s["accepted"] for s in planner["steps"] if not s["tried"])
    assert all(scores[site]["loss_growth_estimate"] > 0 for site in scores)
    assert plan.budget == {"metric": "perplexity", "max_delta": budget, "relative": False}
    assert plan.passes == [{"name": "drop-layers", "options": {},
                            "sites": {site: {"kind": scores[site]["kind"], "score": scores[site]["score"]} for site in planner["dropped"]}}]
    bundle = load_model("llama-small")
    sublayers = {s.site: s for s in find_sublayers(bundle.module)}
    overrides = {k: v for site in planner["dropped"] for k, v in sublayers[site].override.items()}
    with overridden(bundle.module, overrides):
        again = bundle.task.evaluate(first_output_fn(bundle.module, ["input_ids"]), limit=4)["value"]
    assert again == pytest.approx(planner["final"], rel=1e-6) and again - planner["baseline"] <= budget
    assert plan.predicted["metric_delta"] == pytest.approx(again - planner["baseline"], rel=1e-6)
    chart = plan.tables[0]["chart"]
    assert chart["points"][0] == [0, planner["baseline"], True] and chart["limit"] == pytest.approx(planner["baseline"] + budget)


def test_relative_budget_and_nothing_within_it():
    """A budget nothing fits plans no pass, and says so in its steps."""
    plan = analyze_model("llama-small", AnalyzeOptions({"redundancy": None}, samples=8, max_metric_delta=0.001,
                                                        relative_budget=True, eval_samples=2))
    planner = plan.analyses["redundancy"]["planner"]
    assert plan.passes == [] and planner["dropped"] == [] and planner["final"] == planner["baseline"]
    assert all(not s["accepted"] and (not s["tried"] or s["degradation"] > 0.001 * planner["baseline"]) for s in planner["steps"])
    assert planner["budget_text"] == "0.100% of the perplexity" and plan.budget["relative"] is True


def test_cli(tmp_path, tiny_spec):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(cli, ["analyze", "vit-tiny", "--redundancy", "--samples", "8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Redundancy by depth" in result.output and "blocks.1.attn" in result.output
    assert set(json.loads(out.read_text())["analyses"]["redundancy"]["scores"]) >= {"blocks.0.attn", "blocks.0.mlp", "blocks.0"}
    result = CliRunner().invoke(cli, ["analyze", "vit-tiny", "--redundancy", "--max-metric-delta", "abc", "-o", str(tmp_path / "x.json")])
    assert result.exit_code == 2 and "'abc' is not a number, or a number followed by % (e.g. 0.5 or 1%)" in result.output
    # a model without a block stack: one line, no plan written
    result = CliRunner().invoke(cli, ["analyze", tiny_spec, "--redundancy", "-o", str(tmp_path / "y.json")])
    assert result.exit_code == 2 and not (tmp_path / "y.json").exists()
    assert "found no residual blocks (children of an nn.ModuleList holding an attention module or an MLP)" in " ".join(result.output.split())


def test_no_task_with_a_budget(hf_llama_dir, tmp_path):
    result = CliRunner().invoke(cli, ["analyze", str(hf_llama_dir), "--redundancy", "--samples", "8", "--max-metric-delta", "0.1",
                                      "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 2, result.output
    assert "has no evaluation task, so --max-metric-delta cannot judge drops" in " ".join(result.output.split())
    assert not (tmp_path / "p.json").exists()
