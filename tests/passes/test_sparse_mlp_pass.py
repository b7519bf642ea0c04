"""`sparse-mlp`: ReLU MLPs become topk SparseMLP nodes, gated MLPs threshold ones; the graph equals
the torch model computing the same neurons (validation's edited reference), and the reasons a
site is left alone are given."""

from __future__ import annotations

import re

import numpy as np
import pytest

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.export import export_model
from mlpdeploy.model import load_model
from mlpdeploy.passes import PassSpec, rewrite_model
from mlpdeploy.validate import ValidateOptions, validate


@pytest.fixture(scope="module")
def opt_onnx(tmp_path_factory):
    bundle = load_model("opt-relu-tiny")
    return bundle, export_model(bundle, tmp_path_factory.mktemp("opt") / "opt.onnx").model_path


@pytest.mark.parametrize("options", [{"k": 32}, {"k": 256, "rank": 64}, {"k": 1, "rank": 3}], ids=str)
def test_relu_mlps_become_topk_and_validate(opt_onnx, tmp_path, options):
    bundle, path = opt_onnx
    result = rewrite_model(path, tmp_path / "sparse.onnx", [PassSpec("sparse-mlp", options)])
    report = result.passes[0]
    assert report["rewritten"] == 2 and result.op_counts_after["mlpdeploy::SparseMLP"] == 2
    assert "Relu" not in result.op_counts_after and result.op_counts_after["MatMul"] == result.op_counts_before["MatMul"] - 4
    site = report["sites"]["layers.0"]
    assert site["k"] == options["k"] and site["rank"] == options.get("rank", 8) and site["activation"] == "relu"
    assert report["module_overrides"]["layers.0.fc2"].startswith(f"sparse-mlp topk k={options['k']}/256")
    for dims in ({"batch": 1, "seq": 1}, {"batch": 3, "seq": 7}):
        val = validate(bundle, result.model_path, ValidateOptions(dims=dims))
        assert val.passed, val.outputs["logits"]


def test_k_equal_h_is_the_dense_model(opt_onnx, tmp_path):
    bundle, path = opt_onnx
    result = rewrite_model(path, tmp_path / "dense.onnx", [PassSpec("sparse-mlp", {"k": 256})])
    dense = validate(path, result.model_path, ValidateOptions(dims={"batch": 2, "seq": 5}))
    assert dense.passed and dense.outputs["logits"].max_abs < 1e-4


def test_reasons_for_sites_left_alone(opt_onnx, tmp_path):
    _, path = opt_onnx
    cases = {(): "needs k=K", (("k", 999),): r"k=999 is not in 1\.\.256", (("recall", 0.9),): "recall= needs a plan"}
    for options, reason in cases.items():
        result = rewrite_model(path, tmp_path / "same.onnx", [PassSpec("sparse-mlp", dict(options))])
        report = result.passes[0]
        assert report["rewritten"] == 0 and len(report["skipped"]) == 2
        assert all(re.search(reason, r) for r in report["skipped"].values()), report["skipped"]
        assert result.op_counts_after == result.op_counts_before


def test_missing_predictors_file_is_one_line_error(opt_onnx, tmp_path):
    _, path = opt_onnx
    out = tmp_path / "out.onnx"
    with pytest.raises(MlpdeployError, match=r"^sparse-mlp predictors .*missing\.safetensors do not exist; re-run `mlpdeploy analyze"):
        rewrite_model(path, out, [PassSpec("sparse-mlp", {"k": 8, "artifact": str(tmp_path / "missing.safetensors")})])
    assert not out.exists() and not list(tmp_path.glob("*.onnx"))


def test_gated_mlps_become_threshold_and_validate(tmp_path):
    bundle = load_model("llama-tiny")
    path = export_model(bundle, tmp_path / "llama.onnx").model_path
    skipped = rewrite_model(path, tmp_path / "same.onnx", [PassSpec("sparse-mlp")]).passes[0]
    assert skipped["rewritten"] == 0 and all("needs threshold=T" in r for r in skipped["skipped"].values())
    result = rewrite_model(path, tmp_path / "sparse.onnx", [PassSpec("sparse-mlp", {"threshold": 0.05})])
    report = result.passes[0]
    assert report["rewritten"] == 2 and report["sites"]["layers.1.mlp"]["mode"] == "threshold"
    val = validate(bundle, result.model_path, ValidateOptions(dims={"batch": 2, "seq": 11}))
    assert val.passed and set(val.reference_overrides) == {"layers.0.mlp.down_proj", "layers.1.mlp.down_proj"}
    zero = rewrite_model(path, tmp_path / "zero.onnx", [PassSpec("sparse-mlp", {"threshold": 0.0})])
    exact = validate(path, zero.model_path, ValidateOptions(dims={"batch": 1, "seq": 4}))
    assert exact.passed and exact.outputs["logits"].max_abs < 1e-4
    assert np.isfinite(exact.outputs["logits"].max_abs)


def test_planned_site_without_its_predictors_is_one_line_error(opt_onnx, tmp_path):
    """A plan's k was measured with its trained predictor: silently using another would break the budget."""
    _, path = opt_onnx
    spec = PassSpec("sparse-mlp", {}, sites={"layers.0": {"mode": "topk", "k": 20, "rank": 8, "recall": 0.9}})
    out = tmp_path / "out.onnx"
    with pytest.raises(MlpdeployError, match=r"^sparse-mlp: the plan's site layers\.0 was planned with a trained predictor, but no predictors"):
        rewrite_model(path, out, [spec])
    assert not out.exists()
    spec.options["rank"] = 8  # asked for: the SVD predictor
    assert rewrite_model(path, out, [spec]).passes[0]["rewritten"] == 1
