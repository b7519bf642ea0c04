"""compile: every zoo model end to end through ONNX Runtime, fp32 numerics within 1e-4."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlpdeploy.compile import CompileOptions, compile_model
from mlpdeploy.zoo import ZOO

TINY = [name for name in ZOO if name.endswith("-tiny")]


@pytest.mark.parametrize("name", TINY)
def test_zoo_model_compiles_and_validates(name, tmp_path):
    out = tmp_path / name
    report = compile_model(name, out, CompileOptions())
    assert report["passed"], report["validation"]
    for errors in report["validation"]["outputs"].values():
        assert errors["max_abs"] <= 1e-4 and errors["cosine"] > 0.99999
    assert set(report["stages"]) == {"load", "export", "rewrite", "build", "validate"}
    assert all(stage["seconds"] >= 0 for stage in report["stages"].values())
    for path in report["artifacts"].values():
        assert Path(path).exists(), path
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["model"] == name and on_disk["validation"]["passed"] is True
    html = (out / "report.html").read_text()
    assert "<svg" in html and name in html and "PASS" in html
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging directory left behind"


def test_stage_hook_sees_every_stage(tiny_spec, tmp_path):
    events = []
    compile_model(tiny_spec, tmp_path / "out", on_stage=lambda stage, event, _: events.append((stage, event)))
    assert events == [(s, e) for s in ("load", "export", "rewrite", "build", "validate") for e in ("start", "done")]


def test_failed_stage_leaves_no_output(tmp_path, tiny_spec):
    from mlpdeploy.backends.onnxruntime import OrtOptions
    from mlpdeploy.errors import MlpdeployError

    with pytest.raises(MlpdeployError, match="unknown ONNX Runtime optimization level"):
        compile_model(tiny_spec, tmp_path / "out", CompileOptions(build=OrtOptions(opt_level="max")))
    assert list(tmp_path.iterdir()) == []
