"""The datacenter `tensorrt` backend, everything of it that runs without datacenter TensorRT.

Datacenter TensorRT cannot be installed here. Its rules are tested directly, and its build path
runs end to end against TensorRT-RTX's bindings, which share the builder, parser, timing-cache
and plugin-registry API (in a subprocess: registering plugins into TensorRT-RTX's registry makes
its parser abort on plugin nodes for the rest of that process).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mlpdeploy.backends import BuildOptions, available_backends, get_backend
from mlpdeploy.backends.tensorrt import RTXOptions
from mlpdeploy.backends.tensorrt.datacenter import prepare_graph, resolve_target
from mlpdeploy.backends.tensorrt.plugin_nodes import count_plugin_nodes
from mlpdeploy.errors import MissingExtraError, MlpdeployError
from mlpdeploy.plugins.trt_plugin_base import check_tensorrt_version

HAVE_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAVE_RTX = importlib.util.find_spec("tensorrt_rtx_bindings") is not None
REPO = Path(__file__).resolve().parents[2]
H100 = [{"name": "NVIDIA H100 80GB HBM3", "sm": "sm90"}]


def test_registered():
    assert "tensorrt" in available_backends() and get_backend("tensorrt").suffix == ".engine"


@pytest.mark.parametrize("version", ["10.9.0.34", "10.13.3", "11.0.0"])
def test_supported_versions(version):
    check_tensorrt_version(version)


@pytest.mark.parametrize("version", ["10.8.0.43", "8.6.1"])
def test_old_versions_are_refused(version):
    with pytest.raises(MlpdeployError, match=rf"^TensorRT {version} is too old for mlpdeploy, which needs >= 10\.9"):
        check_tensorrt_version(version)


@pytest.mark.parametrize(
    "target, expected",
    [(None, ("sm90", False)), ("sm90", ("sm90", False)), ("SM_90", ("sm90", False)), ("9.0", ("sm90", False)), ("ampere+", ("ampere+", True))],
)
def test_targets(target, expected):
    assert resolve_target(target, H100) == expected


def test_target_must_be_the_gpu_here():
    with pytest.raises(MlpdeployError, match=r"^target sm89 requested, but the GPU here is NVIDIA H100 80GB HBM3 \(sm90\); .*--backend tensorrt-rtx for sm89$"):
        resolve_target("sm89", H100)
    with pytest.raises(MlpdeployError, match="^the tensorrt backend found no GPU; datacenter TensorRT builds on the GPU it targets"):
        resolve_target(None, [])


def _gated_mlp(path: Path | None = None, op_type: str = "GatedMLP", namespace: str = "mlpdeploy"):
    import onnx_ir as ir

    from mlpdeploy.plugins.gated_mlp.onnx_function import make_model

    model = make_model(16, 32)
    (node,) = list(model.graph)
    node.op_type = op_type
    node.attributes["plugin_namespace"] = ir.AttrString("plugin_namespace", namespace)
    if path is not None:
        ir.save(model, path)
    return model


def test_plugin_nodes_are_counted_and_checked():
    assert count_plugin_nodes(_gated_mlp(), []) == {"mlpdeploy::GatedMLP": 1}
    with pytest.raises(MlpdeployError, match=r"^node 'gated_mlp' asks for plugin mlpdeploy::FusedKAN, but mlpdeploy has no such plugin; its plugins are .*GatedMLP"):
        count_plugin_nodes(_gated_mlp(op_type="FusedKAN"), [])
    with pytest.raises(MlpdeployError, match=r"asks for plugin acme::GatedMLP, which mlpdeploy does not provide; pass its library with --plugin-library \(TensorRTOptions.plugin_libraries\)$"):
        count_plugin_nodes(_gated_mlp(namespace="acme"), [])
    assert count_plugin_nodes(_gated_mlp(namespace="acme"), ["libacme.so"]) == {"acme::GatedMLP": 1}


def test_plugin_form_survives_fp16(tmp_path):
    _gated_mlp(tmp_path / "m.onnx")
    model, report, plugins = prepare_graph(tmp_path / "m.onnx", "fp16", [])
    (node,) = [n for n in model.graph if n.domain == "mlpdeploy"]
    assert plugins == {"mlpdeploy::GatedMLP": 1} and report["inlined_functions"] == 0 and model.functions
    assert node.attributes["plugin_namespace"].as_string() == "mlpdeploy" and node.attributes["plugin_version"].as_string() == "1"
    assert {v.dtype.name for v in node.inputs} == {"FLOAT16"}


@pytest.mark.skipif(HAVE_TENSORRT, reason="datacenter TensorRT is installed here")
def test_without_tensorrt_every_entry_point_says_which_extra(tmp_path, tiny_export):
    message = r"^tensorrt is not installed for the tensorrt backend \(datacenter TensorRT >= 10\.9, on a machine with an NVIDIA GPU\): pip install 'mlpdeploy\[tensorrt\]'"
    with pytest.raises(MissingExtraError, match=message):
        get_backend("tensorrt").build(tiny_export.model_path, tmp_path / "out" / "m.engine", BuildOptions())
    assert not (tmp_path / "out").exists()
    runner = get_backend("tensorrt").runner(tmp_path / "m.engine")  # lazy, as Polygraphy's runners: loads when activated
    with pytest.raises(MissingExtraError, match=r"^tensorrt is not installed for running tensorrt engines: pip install 'mlpdeploy\[tensorrt\]'"):
        runner.activate()
    assert not runner.is_active


BUILD_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    from pathlib import Path
    import tensorrt_rtx_bindings as trt
    from mlpdeploy.backends import get_backend
    from mlpdeploy.backends.tensorrt import TensorRTOptions
    warnings.simplefilter("ignore")  # TensorRT-RTX deprecates its (no-op) timing cache
    model, out, cache = sys.argv[1:4]
    gpus = [{"name": "NVIDIA GeForce RTX 4090", "sm": "sm89"}]
    options = TensorRTOptions(precision="fp16", cache_dir=cache)
    backend = get_backend("tensorrt")
    first = backend.build_with(trt, Path(model), Path(out) / "a.engine", options, gpus)
    second = backend.build_with(trt, Path(model), Path(out) / "b.engine", options, gpus)
    print(json.dumps({"first": first.to_json(), "second": second.to_json()}))
    """
)


@pytest.mark.skipif(not HAVE_RTX, reason="the rtx extra is not installed")
def test_build_path_runs_against_tensorrt_rtx_bindings(tmp_path, tiny_export):
    proc = subprocess.run(
        [sys.executable, "-c", BUILD_SCRIPT, str(tiny_export.model_path), str(tmp_path / "out"), str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    first, second = result["first"], result["second"]
    info = first["info"]
    assert info["target"] == "sm89" and info["precision"] == "fp16" and info["plugins_registered"] == ["GatedMLP", "GroupRational", "BSplineKAN", "FANLayer", "SparseMLP", "W4A16MatMul"]
    assert info["bytes"] == Path(first["artifacts"]["engine"]).stat().st_size > 10_000
    assert info["layers"] and info["io"]["input_ids"]["max"] == [256, 256]
    assert info["timing_cache"]["loaded_bytes"] == 0 and info["timing_cache"]["saved_bytes"] > 0
    assert second["info"]["timing_cache"]["loaded_bytes"] == info["timing_cache"]["saved_bytes"]
    assert Path(info["timing_cache"]["path"]).is_file() and str(tmp_path / "cache" / "tensorrt") in info["timing_cache"]["path"]
    assert set(first["artifacts"]) == {"engine", "onnx", "log", "manifest"}
    # no GPU here: the candidate is the parsed graph in ONNX Runtime, and says so
    assert first["executed"] == "ONNX Runtime (CPU) on a.engine.onnx" and "the backend's runner" in first["note"]


@pytest.mark.skipif(not HAVE_RTX, reason="the rtx extra is not installed")
def test_engine_candidate_runs_through_its_own_runner(tmp_path, tiny_export, tiny_spec):
    """An engine candidate whose runner is not ONNX Runtime's session over the artifact: validation
    feeds it inputs made from the engine's manifest and reports what ran."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from mlpdeploy.backends import load_candidate
    from mlpdeploy.backends.candidate import Candidate
    from mlpdeploy.model import find_manifest, load_model
    from mlpdeploy.validate import ValidateOptions, validate

    built = get_backend("tensorrt-rtx").build(tiny_export.model_path, tmp_path / "m.engine", RTXOptions(target="sm89", cache=False))
    engine = built.artifacts["engine"]
    stand_in = Candidate(
        artifact=engine,
        make_runner=lambda name: OnnxrtRunner(SessionFromOnnx(str(built.artifacts["onnx"])), name=name),
        manifest=find_manifest(engine),
        executed="a stand-in runner",
    )
    report = validate(load_model(tiny_spec), stand_in, ValidateOptions(dims={"seq": 5}))
    assert report.passed and report.inputs == {"input_ids": [2, 5]} and report.executed == "a stand-in runner"
    assert report.outputs["output"].max_abs < 1e-4 and report.candidate == str(engine)
    loaded = load_candidate(engine)  # what `mlpdeploy validate --candidate m.engine` runs
    assert loaded.artifact == engine and loaded.executed == "ONNX Runtime (CPU) on m.engine.onnx" and "no GPU" in loaded.note
    with pytest.raises(MlpdeployError, match="^candidate .*elsewhere.engine does not exist"):
        load_candidate(tmp_path / "elsewhere.engine")


@pytest.mark.skipif(not HAVE_RTX, reason="the rtx extra is not installed")
def test_timing_cache_file(tmp_path):
    import warnings

    import tensorrt_rtx_bindings as trt

    from mlpdeploy.backends.tensorrt.cache import TimingCache
    from mlpdeploy.backends.tensorrt.log import logger_for

    builder = trt.Builder(logger_for(trt))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cache = TimingCache(tmp_path, "tensorrt", "trtX-sm90")
        cache.attach(builder.create_builder_config())
        saved = cache.save()
        assert saved > 0 and (tmp_path / "tensorrt" / "timing-trtX-sm90.cache").stat().st_size == saved
        again = TimingCache(tmp_path, "tensorrt", "trtX-sm90")
        again.attach(builder.create_builder_config())
        assert again.loaded_bytes == saved
        off = TimingCache(None, "tensorrt", "trtX-sm90")
        off.attach(builder.create_builder_config())
        assert off.save() == 0 and off.path is None
