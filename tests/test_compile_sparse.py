"""The issue's "done means": `analyze opt-relu-small --sparsity --max-metric-delta 0.01 -o plan.json`,
then `compile --plan plan.json --kv-cache --ort-kernels`: the planned MLPs run as SparseMLP nodes
(the compiled kernel in the built graph), outputs match the torch model computing the same
neurons, and the task metric's delta on the built artifact is what the planner measured."""

from __future__ import annotations

import collections
import json

import onnx
import pytest
from click.testing import CliRunner

from mlpdeploy.cli import cli


@pytest.mark.slow
def test_analyze_then_compile_opt_relu_small(tmp_path):
    plan = tmp_path / "plan.json"
    result = CliRunner().invoke(cli, ["analyze", "opt-relu-small", "--sparsity", "--max-metric-delta", "0.01", "-o", str(plan)])
    assert result.exit_code == 0, result.output
    data = json.loads(plan.read_text())
    planner = data["analyses"]["sparsity"]["planner"]
    assert planner["chosen"] is not None and planner["chosen"]["degradation"] <= 0.01
    assert (tmp_path / data["artifacts"]["sparse-mlp"]).is_file()
    out = tmp_path / "sparse"
    result = CliRunner().invoke(cli, ["compile", "opt-relu-small", "--plan", str(plan), "--kv-cache", "--ort-kernels", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["validation"]["passed"] and (out / data["artifacts"]["sparse-mlp"]).is_file()
    assert report["validation"]["task"]["delta"] == pytest.approx(planner["chosen"]["degradation"], abs=2e-3)
    built = onnx.load(str(out / "model.ort.onnx"), load_external_data=False)
    ops = collections.Counter(n.op_type for n in built.graph.node)
    assert ops["SparseMLP"] == 4 and ops["TopK"] == 0  # the compiled kernel's node, not the inlined body
