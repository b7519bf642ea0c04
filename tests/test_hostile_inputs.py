"""Hostile inputs: each is refused with one line naming the problem and the fix, exit 2, and
nothing is written — not a file, not a staging directory, not the output's parent directories.
(Corrupted/truncated ONNX, bad factories, unknown passes, wrong input names/ranks, unwritable
paths and plans for another model are covered in tests/cli/test_cli.py and tests/analyze/test_plan.py.)"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from mlpdeploy.cli import cli

STACK = f"{Path(__file__).parent / 'fixtures' / 'tiny_mlp.py'}:build_stack"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_refused(result, text: str, code: int = 2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert text in " ".join(result.output.split()), result.output


def listing(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture
def model(tiny_export, tmp_path):
    """A copy of the exported fixture model (and its manifest) in tmp_path, as a proto to edit."""
    return onnx.load(str(tiny_export.model_path)), tiny_export.manifest_path.read_text()


def save(proto, manifest, path: Path, **kwargs) -> Path:
    onnx.save(proto, str(path), **kwargs)
    path.with_suffix(".manifest.json").write_text(manifest)
    return path


def with_external_data(model, tmp_path: Path) -> Path:
    proto, manifest = model
    return save(proto, manifest, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                location="ext.onnx.data", size_threshold=0)


def set_location(path: Path, location: str) -> None:
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, str(path))


def refused_everywhere(path: Path, tmp_path: Path, text: str, tiny_spec: str):
    """build, rewrite and validate all refuse `path` with `text`, writing nothing."""
    before = listing(tmp_path)
    assert_refused(run("build", path, "-o", tmp_path / "out" / "m.ort.onnx"), text)
    assert_refused(run("rewrite", path, "-o", tmp_path / "out" / "m.opt.onnx", "--pass", "fuse-gated-mlp"), text)
    assert_refused(run("validate", "--reference", tiny_spec, "--candidate", path, "--json", tmp_path / "out" / "v.json"), text)
    assert listing(tmp_path) == before


def test_external_data_missing(model, tmp_path, tiny_spec):
    path = with_external_data(model, tmp_path)
    (tmp_path / "ext.onnx.data").unlink()
    refused_everywhere(path, tmp_path, "needs external data file 'ext.onnx.data', which is missing beside the model", tiny_spec)


def test_external_data_truncated(model, tmp_path, tiny_spec):
    path = with_external_data(model, tmp_path)
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    refused_everywhere(path, tmp_path, "is truncated; copy it again", tiny_spec)


@pytest.mark.parametrize("location", ["../outside.data", "/etc/hostname", "sub/../../outside.data"])
def test_external_data_outside_the_model_directory(model, tmp_path, tiny_spec, location):
    inner = tmp_path / "inner"
    inner.mkdir()
    path = with_external_data(model, inner)
    (tmp_path / "outside.data").write_bytes((inner / "ext.onnx.data").read_bytes())  # present, so only the path is wrong
    set_location(path, location)
    refused_everywhere(path, tmp_path, "outside the model's directory; refusing to read it", tiny_spec)


@pytest.mark.parametrize("opset", [99, 3])
def test_unsupported_opset(model, tmp_path, tiny_spec, opset):
    proto, manifest = model
    proto.opset_import[0].version = opset
    path = save(proto, manifest, tmp_path / "old.onnx")
    refused_everywhere(path, tmp_path, f"uses ONNX opset {opset}; supported are 7..", tiny_spec)


def test_unknown_custom_domain(model, tmp_path, tiny_spec):
    proto, manifest = model
    proto.graph.node[0].domain = "com.example"
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    path = save(proto, manifest, tmp_path / "custom.onnx")
    refused_everywhere(path, tmp_path, "is com.example::Gather, an op of a domain no backend here implements", tiny_spec)


def _plan(tmp_path: Path, data) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("plan, text", [
    ({"mlpdeploy_plan": 1, "passes": "garbage"}, "does not follow the plan schema"),
    ([1, 2], "is not an mlpdeploy plan"),
    ("{\"mlpdeploy_plan\": 1, \"passes\": [", "is not valid JSON"),
    ({"mlpdeploy_plan": 2}, "is not an mlpdeploy plan (version 2"),
])
def test_nonsense_plan(tmp_path, tiny_export, plan, text):
    path = _plan(tmp_path, plan)
    before = listing(tmp_path)
    assert_refused(run("rewrite", tiny_export.model_path, "-o", tmp_path / "out" / "m.onnx", "--plan", path), text)
    assert_refused(run("compile", STACK, "-o", tmp_path / "out", "--plan", path), text)
    assert listing(tmp_path) == before


def test_plan_naming_scopes_the_model_lacks(tmp_path):
    from mlpdeploy.analyze import AnalyzeOptions, analyze_model
    from mlpdeploy.model import load_model

    plan = analyze_model(load_model(STACK), AnalyzeOptions({"layer-stats": None}))
    data = plan.to_json()
    data["passes"] = [{"name": "drop-layers", "options": {}, "sites": {"blocks.7.mlp": {}}}]
    path = _plan(tmp_path, data)
    before = listing(tmp_path)
    assert_refused(run("compile", STACK, "-o", tmp_path / "out", "--plan", path), "names site 'blocks.7.mlp'")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("values, text", [
    (np.full((2, 8, 16), np.nan, np.float32), "holds 256 NaN and 0 infinite values"),
    (np.full((2, 8, 16), np.inf, np.float32), "holds 0 NaN and 256 infinite values"),
    (np.zeros((0, 8, 16), np.float32), "is empty (shape [0, 8, 16])"),
])
def test_bad_calibration_data(tmp_path, values, text):
    path = tmp_path / "calib.npz"
    np.savez(path, x=values)
    before = listing(tmp_path)
    assert_refused(run("analyze", STACK, "--layer-stats", "--calibration", path, "-o", tmp_path / "out" / "plan.json"), text)
    assert listing(tmp_path) == before


def test_wrong_past_length_dtype_and_rank():
    from mlpdeploy.errors import MlpdeployError
    from mlpdeploy.model import load_model
    from mlpdeploy.model.inputs import check_inputs, generate_inputs
    from mlpdeploy.model.kv_cache import with_kv_cache

    bundle = with_kv_cache(load_model("llama-tiny"))
    feed = generate_inputs(bundle.inputs, dims={"batch": 2, "seq": 3, "past": 4})
    check_inputs(feed, bundle.inputs, bundle.dim_bounds(), "feed")  # consistent: fine
    wrong = {**feed, "attention_mask": np.ones((2, 9), np.int64)}  # past 4 + seq 3 = 7, not 9
    with pytest.raises(MlpdeployError, match=r"dim past\+seq is 9, but it must equal past=4 \+ seq=3 = 7"):
        check_inputs(wrong, bundle.inputs, bundle.dim_bounds(), "feed")
    short_past = {**feed, "past_key_values.1.key": feed["past_key_values.1.key"][:, :, :2]}
    with pytest.raises(MlpdeployError, match="dim past is 4 in one input and 2 in past_key_values.1.key"):
        check_inputs(short_past, bundle.inputs, bundle.dim_bounds(), "feed")
    with pytest.raises(MlpdeployError, match="has dtype float32, but the manifest expects int64"):
        check_inputs({**feed, "input_ids": feed["input_ids"].astype(np.float32)}, bundle.inputs, bundle.dim_bounds(), "feed")
    with pytest.raises(MlpdeployError, match=r"has shape \[2, 3, 1\], but the manifest expects \[batchxseq\]"):
        check_inputs({**feed, "input_ids": feed["input_ids"][..., None]}, bundle.inputs, bundle.dim_bounds(), "feed")


def test_read_only_output_directory(tmp_path, tiny_spec, monkeypatch):
    """Tests run as root here, where chmod cannot make a directory read-only: the mount's refusal is simulated."""
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert_refused(run("export", tiny_spec, "-o", tmp_path / "a" / "b" / "m.onnx"), "Read-only file system; free space or choose a writable path")
    assert listing(tmp_path) == []


def test_disk_full_during_a_write(tmp_path, tiny_spec, monkeypatch):
    """The model file is half written when the disk fills: nothing stays, not even the half file."""
    import onnx_ir as ir

    def half_then_full(model, path, **kwargs):
        Path(path).write_bytes(b"\x08\x07" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ir, "save", half_then_full)
    assert_refused(run("export", tiny_spec, "-o", tmp_path / "new" / "m.onnx"), "No space left on device; free space")
    assert listing(tmp_path) == []


def test_ctrl_c_during_compile_leaves_only_complete_artifacts(tmp_path, tiny_spec, monkeypatch):
    """Ctrl-C in the build stage (after export and rewrite wrote their files into the staging
    directory): a new output directory is not created; an existing one keeps exactly what it held."""
    from mlpdeploy.backends.onnxruntime.backend import OnnxRuntimeBackend

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(OnnxRuntimeBackend, "build", interrupted)
    fresh = tmp_path / "new" / "out"
    assert_refused(run("compile", tiny_spec, "-o", fresh), "interrupted; artifacts are written whole or not at all", code=130)
    assert listing(tmp_path) == []
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")  # an earlier run's complete artifact
    assert_refused(run("compile", tiny_spec, "-o", out), "interrupted", code=130)
    assert listing(tmp_path) == ["out", "out/report.json"] and (out / "report.json").read_text() == "{}"
