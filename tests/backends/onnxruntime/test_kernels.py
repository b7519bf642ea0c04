"""`build --ort-kernels` (onnxruntime backend): the compiled CPU kernel library travels with the
artifact, validation runs it, and what it cannot take is refused before anything is written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx_ir as ir
import pytest

from mlpdeploy.backends import BuildOptions, get_backend, load_candidate
from mlpdeploy.backends.onnxruntime import OrtOptions
from mlpdeploy.backends.onnxruntime.session import make_session, saved_session_config
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.plugins.group_rational.onnx_function import make_model
from mlpdeploy.validate import ValidateOptions, validate

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")


def write(model: ir.Model, path):
    ir.save(model, str(path))
    return path


def options(tmp_path, **kw) -> BuildOptions:
    return OrtOptions(device="cpu", kernels=True, cache_dir=tmp_path / "cache", **kw)


def test_artifact_carries_and_registers_the_library(tmp_path):
    model = write(make_model(24, 4, seed=1), tmp_path / "gr.onnx")
    out = tmp_path / "built" / "gr.ort.onnx"
    result = get_backend("onnxruntime").build(model, out, options(tmp_path))
    assert set(result.artifacts) == {"model", "session_options", "kernels"}
    assert result.artifacts["kernels"] == out.parent / "gr.ort.kernels.so" and result.artifacts["kernels"].is_file()
    assert result.info["ort_kernels"]["nodes"] == {"GroupRational": 1}
    assert saved_session_config(out)["custom_ops_libraries"] == ["gr.ort.kernels.so"]  # relative: the folder can move
    moved = tmp_path / "moved"
    shutil.move(str(out.parent), moved)
    x = np.random.default_rng(0).uniform(-5, 5, (2, 3, 24)).astype(np.float32)
    kernel = make_session(moved / "gr.ort.onnx", saved_session_config(moved / "gr.ort.onnx")).run(None, {"x": x})[0]
    portable = get_backend("onnxruntime").build(model, tmp_path / "p.ort.onnx", OrtOptions(device="cpu"))
    body = make_session(portable.artifacts["model"], saved_session_config(portable.artifacts["model"])).run(None, {"x": x})[0]
    np.testing.assert_allclose(kernel, body, rtol=1e-6, atol=1e-6)
    assert "custom_ops_libraries" not in saved_session_config(portable.artifacts["model"])


def test_compiled_kat_tiny_validates_with_equal_accuracy(tmp_path):
    from mlpdeploy.export import export_model
    from mlpdeploy.model import load_model

    bundle = load_model("kat-tiny")
    exported = export_model(bundle, tmp_path / "kat.onnx")
    built = get_backend("onnxruntime").build(exported.model_path, tmp_path / "kat.ort.onnx", options(tmp_path))
    assert built.info["ort_kernels"]["nodes"] == {"GroupRational": 4}
    report = validate(bundle, load_candidate(built.artifacts["model"]), ValidateOptions(task=True, task_limit=64))
    assert report.passed and report.outputs["logits"].max_abs <= 1e-4
    assert report.task["candidate"] == report.task["reference"]


def test_float16_nodes_are_refused_and_nothing_is_written(tmp_path):
    model = write(make_model(8, 2, dtype="float16"), tmp_path / "h.onnx")
    out = tmp_path / "out" / "h.ort.onnx"
    with pytest.raises(MlpdeployError, match=r"GroupRational node 'group_rational' computes float16, but the compiled CPU kernel takes float32 only; build without --ort-kernels"):
        get_backend("onnxruntime").build(model, out, options(tmp_path))
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_missing_compiler_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    model = write(make_model(8, 2), tmp_path / "m.onnx")
    out = tmp_path / "out" / "m.ort.onnx"
    with pytest.raises(MlpdeployError, match=r"^no C compiler found"):
        get_backend("onnxruntime").build(model, out, options(tmp_path))
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_cli_flag(tmp_path):
    from click.testing import CliRunner

    from mlpdeploy.cli import cli

    model = write(make_model(8, 2), tmp_path / "m.onnx")
    out = tmp_path / "m.ort.onnx"
    result = CliRunner().invoke(cli, ["build", str(model), "--backend", "onnxruntime", "--ort-kernels", "--cache-dir", str(tmp_path / "c"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.ort.session.json").read_text())["custom_ops_libraries"] == ["m.ort.kernels.so"]
