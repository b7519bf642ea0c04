"""quantize-weights graphs in TensorRT-RTX: an NVFP4 llama (two-level DequantizeLinear) builds for
sm120 ahead of time and validates, through its parsed graph with the FP4 weights decoded, against
the torch reference with the same quantized weights; MXFP4 is refused in one line."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

pytest.importorskip("tensorrt_rtx_bindings", reason="the rtx extra is not installed")

from mlpdeploy.analyze import AnalyzeOptions, analyze_model  # noqa: E402
from mlpdeploy.backends import get_backend  # noqa: E402
from mlpdeploy.backends.tensorrt import RTXOptions  # noqa: E402
from mlpdeploy.errors import MlpdeployError  # noqa: E402
from mlpdeploy.passes.pipeline import PassSpec, reference_edits  # noqa: E402
from mlpdeploy.passes.quantize_weights import quantized_sites  # noqa: E402
from mlpdeploy.passes.rewrite import rewrite_model  # noqa: E402
from mlpdeploy.validate import ValidateOptions, validate  # noqa: E402


def quantized(zoo_export, tmp_path: Path, fmt: str):
    bundle, exported = zoo_export("llama-tiny")
    spec = PassSpec("quantize-weights", {"format": fmt, "target": "trt"})
    return bundle, rewrite_model(exported.model_path, tmp_path / f"{fmt}.onnx", [spec])


def build(path: Path, out: Path):
    return get_backend("tensorrt-rtx").build(path, out, RTXOptions(target="sm120", cache=False))


def test_nvfp4_llama_builds_for_sm120_and_validates(zoo_export, tmp_path):
    bundle, rewritten = quantized(zoo_export, tmp_path, "nvfp4")
    result = build(rewritten.model_path, tmp_path / "nvfp4.engine")
    assert result.info["bytes"] > 10_000 and result.info["target"] == "sm120"
    parsed = onnx.load(result.artifacts["onnx"])
    fp4 = [i for i in parsed.graph.initializer if i.data_type == onnx.TensorProto.FLOAT4E2M1]
    fp8 = [i for i in parsed.graph.initializer if i.data_type == onnx.TensorProto.FLOAT8E4M3FN]
    assert len(fp4) == len(fp8) == 15  # every linear: 4 attention + 3 MLP projections × 2 layers, and lm_head
    assert "FP4 weights decoded" in result.candidate.note or "FP4 weights decoded exactly" in result.candidate.note
    (edit,) = reference_edits(rewritten.passes)  # what compile validates against
    assert len(quantized_sites(rewritten.report("quantize-weights"))) == 15 and edit.precision is None  # no int8 activations
    reference = bundle.__class__(**{**bundle.__dict__, "module": edit.apply(bundle.module)})
    report = validate(reference, result.candidate, ValidateOptions())
    assert report.passed, {k: v.max_abs for k, v in report.outputs.items()}


def test_mxfp4_is_refused_in_one_line(zoo_export, tmp_path):
    _, rewritten = quantized(zoo_export, tmp_path, "mxfp4")
    out = tmp_path / "out"
    with pytest.raises(MlpdeployError, match=r"^TensorRT-RTX cannot build MXFP4 weights \(its ONNX parser reads E8M0 scales only for MXFP8"
                                            r".*or build with --backend tensorrt \(W4A16 plugin\)$"):
        build(rewritten.model_path, out / "m.engine")
    assert not out.exists() or list(out.iterdir()) == []


def test_planner_for_tensorrt_rtx_refuses_mxfp4_only():
    with pytest.raises(MlpdeployError, match="--backend tensorrt-rtx builds none of --quant mxfp4"):
        analyze_model("llama-tiny", AnalyzeOptions({"quant": "mxfp4"}, samples=8, max_metric_delta=0.01, relative_budget=True,
                                                   backend="tensorrt-rtx"))
