"""The tensorrt-rtx backend: real TensorRT-RTX builds, ahead of time, on this GPU-less machine."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("tensorrt_rtx_bindings", reason="the rtx extra is not installed")

from mlpdeploy.backends import available_backends, get_backend  # noqa: E402
from mlpdeploy.backends.onnxruntime import OrtOptions  # noqa: E402
from mlpdeploy.backends.tensorrt import RTXOptions  # noqa: E402
from mlpdeploy.backends.tensorrt.gpus import visible_gpus  # noqa: E402
from mlpdeploy.backends.tensorrt.profile import parse_shapes  # noqa: E402
from mlpdeploy.backends.tensorrt.rtx import TARGETS, check_target, validation_note  # noqa: E402
from mlpdeploy.errors import MlpdeployError  # noqa: E402
from mlpdeploy.model.manifest import load_manifest  # noqa: E402
from mlpdeploy.passes.pipeline import available_passes  # noqa: E402
from mlpdeploy.validate import ValidateOptions, validate  # noqa: E402
from mlpdeploy.zoo import ZOO  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def build(model_path, out, **options):
    options.setdefault("cache", "cache_dir" in options)  # off unless a test gives it a directory
    return get_backend("tensorrt-rtx").build(Path(model_path), Path(out), RTXOptions(**options))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_registered():
    assert "tensorrt-rtx" in available_backends()


def check_zoo_build(zoo_export, zoo_rewrite, tmp_path, model, pass_name, target):
    """A zoo model, plain or after a pass, parses with no error and builds; on sm89 its parsed
    graph still computes what the torch model does (in fp16 tolerances after convert-precision)."""
    path = zoo_rewrite(model, pass_name)
    result = build(path, tmp_path / "m.engine", target=target)
    info = result.info
    assert result.artifacts["engine"].stat().st_size == info["bytes"] > 10_000
    assert info["target"] == target and info["cache"] == "off" and info["layers"]
    assert info["network_layers"] > 0 and any(e["mode"] == "input" for e in info["io"].values())
    parsed = onnx.load(result.artifacts["onnx"])
    attrs = [a.name for n in parsed.graph.node for a in n.attribute] + [a.name for f in parsed.functions for n in f.node for a in n.attribute]
    assert "plugin_namespace" not in attrs
    history = load_manifest(result.artifacts["manifest"]).history
    assert history[-1]["stage"] == "build" and history[-1]["target"] == target
    if target == "sm89":
        bundle, _ = zoo_export(model)
        precision = "fp16" if pass_name == "convert-precision" else "fp32"
        report = validate(bundle, result.candidate, ValidateOptions(precision=precision))
        assert report.passed, {k: v.max_abs for k, v in report.outputs.items()}


# A representative few in `make test`: each pass that changes what TensorRT parses, both targets.
REPRESENTATIVE = [
    ("llama-tiny", None, "sm89"),
    ("llama-tiny", "fuse-gated-mlp", "sm120"),
    ("vit-tiny", None, "sm120"),
    ("opt-relu-tiny", "convert-precision", "sm89"),
    ("kat-tiny", None, "sm89"),  # mlpdeploy::GroupRational exported from torch, in function-body form
    ("kan-tiny", None, "sm120"),  # mlpdeploy::BSplineKAN
    ("fan-tiny", None, "sm89"),  # mlpdeploy::FANLayer
]


@pytest.mark.parametrize("model, pass_name, target", REPRESENTATIVE)
def test_representative_zoo_builds(zoo_export, zoo_rewrite, tmp_path, model, pass_name, target):
    check_zoo_build(zoo_export, zoo_rewrite, tmp_path, model, pass_name, target)


@pytest.mark.slow
@pytest.mark.parametrize("target", ["sm89", "sm120"])
@pytest.mark.parametrize("pass_name", [None, *available_passes()], ids=lambda p: p or "plain")
@pytest.mark.parametrize("model", list(ZOO))
def test_zoo_model_builds(zoo_export, zoo_rewrite, tmp_path, model, pass_name, target):
    """Every zoo model, plain and after every registered pass, for every target (`make test-slow`)."""
    check_zoo_build(zoo_export, zoo_rewrite, tmp_path, model, pass_name, target)


def test_llama_fp16(zoo_export, tmp_path):
    """fp16 engine of llama-tiny; the fp16 graph's error vs fp32, measured in ONNX Runtime, next to ORT's own converter."""
    bundle, exported = zoo_export("llama-tiny")
    fp32 = build(exported.model_path, tmp_path / "fp32.engine", target="sm89")
    fp16 = build(exported.model_path, tmp_path / "fp16.engine", target="sm89", precision="fp16")
    report = fp16.info["precision_report"]
    assert report["low_precision_nodes"] >= 7 * 2  # every projection of both layers, plus the head
    assert {"ReduceMean", "Softmax"} <= set(report["fp32_nodes"])
    assert fp16.info["io"]["input_ids"]["dtype"] == "Int64" and fp16.info["io"]["logits"]["dtype"] == "Float"
    assert fp16.artifacts["engine"].read_bytes() != fp32.artifacts["engine"].read_bytes()
    ours = validate(bundle, fp16.candidate, ValidateOptions(precision="fp16", dims={"batch": 3, "seq": 64}))
    assert ours.passed
    ort_error = _ort_converter_error(exported.model_path, bundle, tmp_path)
    print(f"\nllama-tiny fp16 vs torch fp32, max abs: mlpdeploy {ours.outputs['logits'].max_abs:.3g}, "
          f"onnxruntime float16 converter {ort_error:.3g}")
    assert ours.outputs["logits"].max_abs < 2e-3


def _ort_converter_error(model_path, bundle, tmp_path) -> float:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load(model_path), keep_io_types=True)
    path = tmp_path / "ort_fp16.onnx"
    onnx.save(converted, path)
    return validate(bundle, path, ValidateOptions(precision="fp16", dims={"batch": 3, "seq": 64})).outputs["logits"].max_abs


def test_llama_bf16_validates_through_an_emulated_graph(zoo_export, tmp_path):
    bundle, exported = zoo_export("llama-tiny")
    result = build(exported.model_path, tmp_path / "bf16.engine", target="sm120", precision="bf16")
    assert result.artifacts["validation_onnx"] != result.artifacts["onnx"]
    assert result.candidate.executed == f"ONNX Runtime (CPU) on {result.artifacts['validation_onnx'].name}"
    assert "bf16 rounding emulated in fp32" in result.candidate.note
    parsed = onnx.load(result.artifacts["onnx"])
    assert any(i.data_type == onnx.TensorProto.BFLOAT16 for i in parsed.graph.initializer)
    report = validate(bundle, result.candidate, ValidateOptions(precision="bf16"))
    assert report.passed and report.outputs["logits"].max_abs > 1e-4  # the rounding is really there


def fp4_model(path: Path, k: int = 64, n: int = 32) -> Path:
    """MatMul with an NVFP4 weight in TensorRT form: DQ(FP4 [K,N], DQ(FP8 E4M3 [K/16,N], FP32 scalar)), opset 23."""
    import ml_dtypes
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    e2m1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
    weight = rng.choice(e2m1, size=(k, n))
    weight_fp4 = helper.make_tensor("w_fp4", TensorProto.FLOAT4E2M1, [k, n], weight.astype(ml_dtypes.float4_e2m1fn).astype(np.float32).ravel())
    scales = numpy_helper.from_array(rng.uniform(0.5, 2, (k // 16, n)).astype(ml_dtypes.float8_e4m3fn), "w_scale")
    global_scale = numpy_helper.from_array(np.array(0.01, np.float32), "w_global_scale")
    nodes = [
        helper.make_node("DequantizeLinear", ["w_scale", "w_global_scale"], ["w_scale_f"], name="dq_scale"),
        helper.make_node("DequantizeLinear", ["w_fp4", "w_scale_f"], ["w"], name="dq_weight", axis=0, block_size=16),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes, "fp4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], [weight_fp4, scales, global_scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def test_fp4_weights_build_for_blackwell_only(tmp_path):
    model = fp4_model(tmp_path / "fp4.onnx")
    result = build(model, tmp_path / "ok" / "fp4.engine", target="sm120")
    assert result.info["bytes"] > 10_000 and result.info["io"]["x"]["max"] == [256, 64]
    out = tmp_path / "sm89"
    with pytest.raises(MlpdeployError) as err:
        build(model, out / "fp4.engine", target="sm89")
    assert str(err.value) == (
        "TensorRT-RTX cannot build for sm89: the model contains fp4_e2m1 tensors, which only Blackwell GPUs "
        "(sm120, sm121) support; build with --target sm120 (or sm121), or quantize those weights to int4/fp8 for this target"
    )
    assert leftovers(out) == []


def test_parser_errors_name_node_and_op_and_leave_nothing(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Unique", ["x"], ["y"], name="dedupe")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), tmp_path / "bad.onnx")
    out = tmp_path / "out"
    with pytest.raises(MlpdeployError, match=r"^TensorRT-RTX cannot parse bad\.engine\.onnx: node 'dedupe' \(Unique\): unsupported node \(checkUnique\)$"):
        build(tmp_path / "bad.onnx", out / "bad.engine", target="sm89")
    assert leftovers(out) == []


PLUGIN_SCRIPT = textwrap.dedent(
    """
    import sys, onnx_ir as ir, tensorrt_rtx_bindings as trt
    from mlpdeploy.plugins.trt_register import register_plugins
    from mlpdeploy.plugins.gated_mlp.onnx_function import make_model
    register_plugins(trt)  # the GatedMLP plugin now sits in TensorRT-RTX's registry, as in the crash
    case, out = sys.argv[1], sys.argv[2]
    model = make_model(16, 32)  # plugin form: plugin_namespace="mlpdeploy" on the node
    if case == "strip-function":
        model.functions.clear()
        [node] = list(model.graph)
        node.attributes.pop("plugin_namespace")
        node.attributes.pop("plugin_version")
    if case == "foreign-plugin":
        [node] = list(model.graph)
        node.domain = "acme"
        node.attributes["plugin_namespace"] = ir.AttrString("plugin_namespace", "acme")
        model.opset_imports["acme"] = 1
    ir.save(model, out + "/in.onnx")
    if case == "raw-parse":  # what the backend prevents: TensorRT-RTX's parser on the plugin node
        logger = trt.Logger(trt.Logger.ERROR)
        parser = trt.OnnxParser(trt.Builder(logger).create_network(0), logger)
        print("parsed", parser.parse_from_file(out + "/in.onnx"))
        sys.exit(0)
    from mlpdeploy.backends import get_backend
    from mlpdeploy.backends.tensorrt import RTXOptions
    from mlpdeploy.errors import MlpdeployError
    try:
        result = get_backend("tensorrt-rtx").build(out + "/in.onnx", out + "/out/m.engine", RTXOptions(target="sm89", cache=False))
    except MlpdeployError as exc:
        print("ERROR", exc)
        sys.exit(2)
    print("BUILT", result.info["bytes"])
    """
)


def _plugin_case(case: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PLUGIN_SCRIPT, case, str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_raw_parser_aborts_on_a_registered_plugin(tmp_path):
    """The hazard itself: TensorRT-RTX's parser kills the process on a node that resolves to a Python plugin."""
    proc = _plugin_case("raw-parse", tmp_path)
    assert proc.returncode < 0 or proc.returncode > 128, proc.stdout + proc.stderr
    assert "parsed" not in proc.stdout


def test_plugin_form_is_built_in_function_body_form(tmp_path):
    proc = _plugin_case("plugin-form", tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("BUILT"), proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "case, message",
    [
        ("strip-function", r"node 'gated_mlp' \(mlpdeploy::GatedMLP\) is in domain 'mlpdeploy' and has no ONNX function body"),
        ("foreign-plugin", r"node 'gated_mlp' \(acme::GatedMLP\) carries plugin_namespace, plugin_version"),
    ],
)
def test_graph_that_resolves_to_a_plugin_is_refused(tmp_path, case, message):
    proc = _plugin_case(case, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = proc.stdout.strip()
    assert line.startswith("ERROR in.onnx: ") and len(line.splitlines()) == 1
    assert __import__("re").search(message, line) and "use --backend tensorrt" in line
    assert leftovers(tmp_path / "out") == []


def test_targets(tmp_path, tiny_export):
    assert [check_target(t) for t in ("SM89", "8.9", "sm_120", "121", None)] == ["sm89", "sm89", "sm120", "sm121", None]
    with pytest.raises(MlpdeployError, match=r"^unknown TensorRT-RTX target 'sm90'; valid targets are sm75, sm80, sm86, sm89, sm120, sm121$"):
        build(tiny_export.model_path, tmp_path / "m.engine", target="sm90")
    assert leftovers(tmp_path) == []
    assert TARGETS == ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")
    portable = build(tiny_export.model_path, tmp_path / "p.engine")
    assert portable.info["target"].startswith("portable")
    with pytest.raises(MlpdeployError, match=r"^TensorRT-RTX cannot build node '\w+' for sm75: Turing GPUs have no FP32 GEMM in TensorRT-RTX; build with --precision fp16 for sm75$"):
        build(tiny_export.model_path, tmp_path / "t32" / "t.engine", target="sm75")
    assert leftovers(tmp_path / "t32") == []
    turing = build(tiny_export.model_path, tmp_path / "t.engine", target="sm75", precision="fp16")
    assert turing.info["bytes"] > 10_000


def test_engine_cache(tmp_path, tiny_export):
    cache = tmp_path / "cache"
    first = build(tiny_export.model_path, tmp_path / "a.engine", target="sm89", cache_dir=str(cache))
    second = build(tiny_export.model_path, tmp_path / "b.engine", target="sm89", cache_dir=str(cache))
    other = build(tiny_export.model_path, tmp_path / "c.engine", target="sm120", cache_dir=str(cache))
    assert (first.info["cache"], second.info["cache"], other.info["cache"]) == ("miss", "hit", "miss")
    assert first.artifacts["engine"].read_bytes() == second.artifacts["engine"].read_bytes()
    assert second.info["layers"] == first.info["layers"] and second.artifacts["log"].read_text() == first.artifacts["log"].read_text()
    assert len(list((cache / "tensorrt-rtx").glob("*.engine"))) == 2


def test_shapes_reach_the_engine_profile(tmp_path, tiny_export):
    shapes = parse_shapes(["seq=2:16:64", "batch=1:1:4"])
    result = build(tiny_export.model_path, tmp_path / "m.engine", target="sm89", shapes=shapes)
    assert result.info["io"]["input_ids"] | {} == {"mode": "input", "dtype": "Int64", "dims": [-1, -1], "min": [1, 2], "opt": [1, 16], "max": [4, 64]}
    assert result.info["profile"]["input_ids"] == {"min": [1, 2], "opt": [1, 16], "max": [4, 64]}
    with pytest.raises(MlpdeployError, match="--shapes names unknown tokens"):
        build(tiny_export.model_path, tmp_path / "x" / "m.engine", target="sm89", shapes=parse_shapes(["tokens=1:2:3"]))
    assert leftovers(tmp_path / "x") == []


def test_artifacts_info_and_note(tmp_path, tiny_export):
    result = build(tiny_export.model_path, tmp_path / "m.engine", target="sm89")
    assert {k: v.name for k, v in result.artifacts.items()} == {
        "engine": "m.engine", "onnx": "m.engine.onnx", "log": "m.engine.log", "manifest": "m.engine.manifest.json",
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(v.name for v in result.artifacts.values())
    assert result.candidate.artifact == result.artifacts["engine"] and result.candidate.executed == "ONNX Runtime (CPU) on m.engine.onnx"
    info = result.info
    assert info["seconds"] >= info["build_seconds"] > 0 and "ignored_options" not in info
    assert any("Engine generation completed" in line for line in info["log"])
    assert any(layer["type"] == "gemm" for layer in info["layers"])
    assert json.loads(json.dumps(result.to_json()))["backend"] == "tensorrt-rtx"
    expected = "no GPU is present" if not visible_gpus() else "GPU here"
    assert expected in result.candidate.note == validation_note("sm89", "fp32")


def test_options_of_another_backend_are_reported_not_applied(tmp_path, tiny_export):
    options = OrtOptions(device="cuda", opt_level="basic", precision="fp16", cache=False)
    info = get_backend("tensorrt-rtx").build(tiny_export.model_path, tmp_path / "m.engine", options).info
    assert info["ignored_options"] == ["device", "opt_level"] and info["precision"] == "fp16" and info["cache"] == "off"
    assert info["target"].startswith("portable")


def test_missing_extra_is_one_line(tmp_path, tiny_export, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx_bindings", None)
    with pytest.raises(MlpdeployError, match=r"^tensorrt_rtx_bindings is not installed for the tensorrt-rtx backend: pip install 'mlpdeploy\[rtx\]'"):
        build(tiny_export.model_path, tmp_path / "m.engine", target="sm89")


def test_compile_end_to_end(tmp_path):
    from mlpdeploy.compile import CompileOptions, compile_model

    options = CompileOptions(backend="tensorrt-rtx", build=RTXOptions(target="sm120", cache=False))
    report = compile_model("llama-tiny", tmp_path / "out", options)
    assert report["passed"] and Path(report["artifacts"]["build_engine"]).stat().st_size > 10_000
    assert report["validation"]["note"].startswith("the TensorRT-RTX engine itself was not run")
    assert report["validation"]["candidate"].endswith("model.engine")
    assert report["validation"]["executed"] == "ONNX Runtime (CPU) on model.engine.onnx"
    assert report["stages"]["build"]["target"] == "sm120"
