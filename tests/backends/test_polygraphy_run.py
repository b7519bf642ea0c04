"""`polygraphy run ARTIFACT --mlpdeploy --onnxrt`, through Polygraphy's own CLI: an `--ort-kernels` KAN
artifact (kat-tiny: GroupRational nodes on mlpdeploy's compiled kernel) against stock ONNX Runtime on
the same file, and the outputs it saves judged by `mlpdeploy validate --candidate-outputs`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from mlpdeploy.backends import get_backend
from mlpdeploy.backends.onnxruntime import OrtOptions

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")
POLYGRAPHY = Path(sys.executable).parent / "polygraphy"


@pytest.fixture(scope="module")
def artifact(zoo_export, tmp_path_factory) -> Path:
    _, exported = zoo_export("kat-tiny")
    root = tmp_path_factory.mktemp("kat")
    out = root / "built" / "model.ort.onnx"
    get_backend("onnxruntime").build(exported.model_path, out, OrtOptions(device="cpu", kernels=True, cache_dir=root / "cache"))
    return out


def polygraphy(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(POLYGRAPHY), "run", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def recorded(artifact, tmp_path_factory) -> tuple[Path, Path, str]:
    """One `polygraphy run ARTIFACT --mlpdeploy --onnxrt`: (its saved inputs, its saved outputs, its log)."""
    root = tmp_path_factory.mktemp("recorded")
    run = polygraphy(artifact, "--mlpdeploy", "--onnxrt", "--input-shapes", "pixel_values:[3,1,8,8]", "--iterations", "2",
                     "--save-inputs", root / "in.json", "--save-outputs", root / "out.json", cwd=root)
    assert "unrecognized arguments: --mlpdeploy" not in run.stderr, (
        "Polygraphy does not know --mlpdeploy: the polygraphy.run.plugins entry point (pyproject.toml) is not installed; pip install -e .")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return root / "in.json", root / "out.json", run.stdout


def test_polygraphy_compares_the_artifact_with_stock_onnxruntime(artifact, recorded):
    model = onnx.load(str(artifact), load_external_data=False)
    assert Counter((n.domain, n.op_type) for n in model.graph.node)[("mlpdeploy", "GroupRational")] == 4  # kernel nodes, not inlined
    assert {(f.domain, f.name) for f in model.functions} == {("mlpdeploy", "GroupRational")}  # bodies kept for stock ORT
    _, outputs, log = recorded
    assert "Accuracy Summary | mlpdeploy-onnxruntime vs. onnxrt-runner" in log and "Passed: 2/2 iterations" in log
    assert [name for name, _ in json.loads(outputs.read_text())["lst"]][0] == "mlpdeploy-onnxruntime"


def test_the_mlpdeploy_runner_is_the_one_that_loads_the_kernels_library(artifact, tmp_path):
    """Without its library the artifact still loads in stock ONNX Runtime (the test above), but not as built."""
    copy = tmp_path / "copy"
    shutil.copytree(artifact.parent, copy)
    (copy / "model.ort.kernels.so").unlink()
    run = polygraphy(copy / "model.ort.onnx", "--mlpdeploy", "--onnxrt", cwd=tmp_path)
    assert run.returncode != 0 and "model.ort.kernels.so does not exist; rebuild with --ort-kernels" in run.stdout + run.stderr


def validate(*args):
    from mlpdeploy.cli import cli

    return CliRunner().invoke(cli, ["validate", "--reference", "kat-tiny", *map(str, args)])


def test_saved_outputs_feed_mlpdeploy_validate(artifact, recorded):
    inputs, outputs, _ = recorded
    result = validate("--candidate", artifact, "--inputs", inputs, "--candidate-outputs", outputs, "--json", inputs.parent / "report.json")
    assert result.exit_code == 0, result.output
    report = json.loads((inputs.parent / "report.json").read_text())
    assert report["executed"].startswith("outputs recorded by runner mlpdeploy-onnxruntime in out.json, not run here")
    assert report["inputs"] == {"pixel_values": [3, 1, 8, 8]} and report["outputs"]["logits"]["max_abs"] < 1e-4
    # the other runner's outputs (stock ONNX Runtime through the function bodies) pass too
    other = json.loads(outputs.read_text())["lst"][1][0]
    assert validate("--candidate", artifact, "--inputs", inputs, "--candidate-outputs", outputs, "--candidate-runner", other).exit_code == 0


def test_recorded_outputs_that_disagree_fail(artifact, recorded, tmp_path):
    from polygraphy.comparator import RunResults

    inputs, outputs, _ = recorded
    results = RunResults.load(str(outputs))
    iteration = results["mlpdeploy-onnxruntime"][1]  # the second feed's outputs only
    iteration["logits"] = iteration["logits"] + np.float32(0.05)
    results.save(str(tmp_path / "bad.json"))
    result = validate("--candidate", artifact, "--inputs", inputs, "--candidate-outputs", tmp_path / "bad.json")
    assert result.exit_code == 1 and "FAIL" in result.output


@pytest.mark.parametrize("extra, message", [
    ((), r"--candidate-outputs needs the inputs those outputs were computed from: --inputs IN.json"),
    (("--inputs", "{inputs}", "--task"), r"recorded outputs answer only the recorded inputs"),
    (("--inputs", "{inputs}", "--candidate-runner", "nobody"), r"has no run of runner 'nobody'; it holds mlpdeploy-onnxruntime, onnxrt-runner"),
    (("--inputs", "{one}"), r"holds 1 feed\(s\) but .*out.json holds 2 recorded iteration\(s\); save both from one polygraphy run"),
])
def test_recorded_outputs_errors(artifact, recorded, tmp_path, extra, message):
    import re

    from polygraphy.json import load_json, save_json

    inputs, outputs, _ = recorded
    save_json(load_json(str(inputs))[:1], str(tmp_path / "one.json"))
    args = [a.format(inputs=inputs, one=tmp_path / "one.json") for a in extra]
    result = validate("--candidate", artifact, "--candidate-outputs", outputs, *args)
    assert result.exit_code == 2 and re.search(message, result.output), result.output
    assert len(result.output.strip().splitlines()) == 1
