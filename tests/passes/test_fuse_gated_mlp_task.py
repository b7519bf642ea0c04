"""fuse-gated-mlp on the trained llama-small: every MLP fused, perplexity kept within 0.1%."""

from __future__ import annotations

from mlpdeploy.compile import CompileOptions, compile_model
from mlpdeploy.passes import pass_report
from mlpdeploy.passes.pipeline import parse_pass_spec


def test_llama_small_perplexity_kept(tmp_path):
    options = CompileOptions(passes=[parse_pass_spec("fuse-gated-mlp")], task_limit=64)
    report = compile_model("llama-small", tmp_path / "out", options)
    rewrite = report["stages"]["rewrite"]
    layers = sum(1 for name in report["validation"]["layers"]["errors"] if name.endswith(".mlp"))
    assert rewrite["op_counts_after"]["mlpdeploy::GatedMLP"] == pass_report(rewrite["passes"], "fuse-gated-mlp")["rewritten"] >= 4
    assert layers == pass_report(rewrite["passes"], "fuse-gated-mlp")["rewritten"], "per-layer validation finds each fused MLP"
    task = report["validation"]["task"]
    assert task["metric"] == "perplexity"
    assert abs(task["relative_delta"]) <= 1e-3, task
    assert task["agreement"] >= 0.999
    assert report["passed"]
