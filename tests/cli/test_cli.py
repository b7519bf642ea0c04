"""The CLI: each user error is one line, exit 2, no traceback, and no partial output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mlpdeploy.cli import cli

FIXTURES = Path(__file__).parents[1] / "fixtures"


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, code: int, text: str):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert text in " ".join(result.output.split()), result.output


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*")) if directory.exists() else []


def test_missing_model(tmp_path):
    result = run("export", "no-such-model", "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, 2, "cannot find model 'no-such-model'; MODEL must be a zoo name")
    assert files_in(tmp_path) == []


def test_bad_factory_spec(tmp_path):
    result = run("compile", f"{FIXTURES / 'tiny_mlp.py'}:nope", "-o", tmp_path / "out")
    assert_one_line_error(result, 2, "has no function 'nope'")
    assert files_in(tmp_path) == []


def test_not_onnx_file(tmp_path):
    bogus = tmp_path / "model.onnx"
    bogus.write_text("this is not a protobuf")
    result = run("build", bogus, "-o", tmp_path / "m.ort.onnx")
    assert_one_line_error(result, 2, "is not a readable ONNX model")
    assert files_in(tmp_path) == ["model.onnx"]


def test_truncated_onnx_file(tiny_export, tmp_path):
    data = tiny_export.model_path.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    result = run("build", cut, "-o", tmp_path / "cut.ort.onnx")
    assert_one_line_error(result, 2, "it may be truncated or not ONNX")
    assert files_in(tmp_path) == ["cut.onnx"]
    result = run("validate", "--reference", cut, "--candidate", cut)
    assert_one_line_error(result, 2, "cut.onnx")


def test_unwritable_output_path(tmp_path, tiny_spec):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    result = run("export", tiny_spec, "-o", blocker / "m.onnx")
    assert_one_line_error(result, 2, "cannot create output directory")
    result = run("compile", tiny_spec, "-o", blocker / "out")
    assert_one_line_error(result, 2, "cannot create output directory")
    assert files_in(tmp_path) == ["file"]


def test_inputs_not_matching_manifest(tiny_export, tiny_spec, tmp_path):
    path = tmp_path / "in.npz"
    np.savez(path, input_ids=np.zeros((2, 3, 4), np.int64))
    report = tmp_path / "val.json"
    result = run("validate", "--reference", tiny_spec, "--candidate", tiny_export.model_path, "--inputs", path, "--json", report)
    assert_one_line_error(result, 2, "has shape [2, 3, 4], but the manifest expects [batchxseq]")
    assert not report.exists()


def test_unknown_pass_is_rejected(tmp_path, tiny_spec):
    result = run("compile", tiny_spec, "-o", tmp_path / "out", "--pass", "no-such-pass")
    assert_one_line_error(result, 2, "unknown pass 'no-such-pass'; available passes:")
    assert files_in(tmp_path) == []


def test_export_build_validate_chain(tiny_spec, tmp_path):
    onnx_path, built, report = tmp_path / "m.onnx", tmp_path / "m.ort.onnx", tmp_path / "val.json"
    assert run("export", tiny_spec, "-o", onnx_path).exit_code == 0
    assert run("build", onnx_path, "--backend", "onnxruntime", "-o", built).exit_code == 0
    result = run("validate", "--reference", tiny_spec, "--candidate", built, "--json", report, "--dim", "batch=3")
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["passed"] and data["inputs"] == {"input_ids": [3, 8]}
    assert set(data["outputs"]["output"]) >= {"max_abs", "max_rel", "mean_abs", "cosine"}


def test_validate_exits_1_on_perturbed_weights(tiny_export, tiny_spec, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(tiny_export.model_path))
    for init in model.graph.initializer:
        if init.name == "head.weight_t":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.1, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    report = tmp_path / "val.json"
    result = run("validate", "--reference", tiny_spec, "--candidate", bad, "--json", report)
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "Traceback" not in result.output
    assert json.loads(report.read_text())["passed"] is False


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_traceback(tmp_path, where):
    args = ["export", "no-such-model", "-o", tmp_path / "m.onnx"]
    result = run(*(["--debug", *args] if where == "before" else [*args, "--debug"]))
    assert result.exit_code == 2
    assert "Traceback (most recent call last)" in result.output
    assert "in load_model" in result.output  # the frame that raised
    assert "mlpdeploy.errors.MlpdeployError: cannot find model 'no-such-model'" in result.output
    assert result.output.rstrip().splitlines()[-1].startswith("error: cannot find model")


def test_without_debug_no_traceback(tmp_path):
    result = run("export", "no-such-model", "-o", tmp_path / "m.onnx")
    assert "Traceback" not in result.output and result.output.count("\n") == 1


def test_unexpected_failure_is_one_line_naming_the_type(tmp_path, monkeypatch, tiny_spec):
    """A bug (not an MlpdeployError) still ends as one line, exit 2, with a hint to rerun with --debug."""
    from mlpdeploy.passes import pipeline

    def broken(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(pipeline, "run_pipeline", broken)
    monkeypatch.setattr("mlpdeploy.passes.rewrite.run_pipeline", broken)
    result = run("compile", tiny_spec, "-o", tmp_path / "out")
    assert_one_line_error(result, 2, "KeyError: 'oops' (rerun with --debug for the traceback)")
    assert files_in(tmp_path) == []


def test_plugin_user_errors_are_one_line(tmp_path, tiny_export):
    """An op's own check (plugins/) reaches the user as a one-line error, not as an internal error."""
    pytest.importorskip("tensorrt_rtx_bindings", reason="the rtx extra is not installed")
    from mlpdeploy.onnx_io import load_ir, save_onnx
    from mlpdeploy.passes import PassSpec, run_pipeline

    model = load_ir(tiny_export.model_path)
    run_pipeline(model, [PassSpec("fuse-gated-mlp")])
    node = next(n for n in model.graph if n.op_type == "GatedMLP")
    node.replace_input_with(1, None)  # an empty input slot, which TensorRT's parser rejects
    path = tmp_path / "broken.onnx"
    save_onnx(model, path)
    result = run("build", path, "--backend", "tensorrt-rtx", "-o", tmp_path / "out" / "m.engine")
    assert_one_line_error(result, 2, "mlpdeploy::GatedMLP node")
    assert "has an empty input slot, which TensorRT's ONNX parser rejects" in result.output
    assert "internal" not in result.output.lower() and files_in(tmp_path / "out") == []


@pytest.mark.parametrize("command", ["zoo", "passes"])
def test_listing_commands(command):
    result = run(command)
    assert result.exit_code == 0, result.output


def test_zoo_lists_trained_metrics(monkeypatch):
    from mlpdeploy.cli import app

    monkeypatch.setattr(app.console, "width", 200)
    result = CliRunner().invoke(cli, ["zoo"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│")}
    assert {"llama-tiny", "llama-small", "opt-relu-small", "vit-small", "mixer-small"} <= set(rows)
    assert "perplexity 4." in rows["llama-small"] and "untrained" in rows["llama-tiny"]
    assert "accuracy 9" in rows["vit-small"]
