"""The onnxruntime backend: optimized model, saved session settings, derived manifest."""

from __future__ import annotations

import json

import pytest

from mlpdeploy.backends import get_backend
from mlpdeploy.backends.onnxruntime import OrtOptions
from mlpdeploy.backends.onnxruntime.session import session_config
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.manifest import load_manifest
from mlpdeploy.model.source import load_model
from mlpdeploy.validate import ValidateOptions, validate


@pytest.mark.parametrize("level", ["basic", "extended", "all"])
def test_build_writes_model_session_and_manifest(tiny_export, tiny_spec, tmp_path, level):
    out = tmp_path / "m.ort.onnx"
    result = get_backend("onnxruntime").build(tiny_export.model_path, out, OrtOptions(opt_level=level, device="cpu"))
    assert set(result.artifacts) == {"model", "session_options", "manifest"}
    session = json.loads(result.artifacts["session_options"].read_text())
    assert session["providers"] == ["CPUExecutionProvider"]
    assert session["config_entries"]["session.qdq_matmulnbits_accuracy_level"] == "0"
    assert session["graph_optimization_level"] == f"ORT_ENABLE_{level.upper()}"
    assert result.info["saved_at"] == ("ORT_ENABLE_EXTENDED" if level == "all" else session["graph_optimization_level"])
    assert [h["stage"] for h in load_manifest(result.artifacts["manifest"]).history] == ["export", "build"]
    report = validate(load_model(tiny_spec), out, ValidateOptions(dims={"batch": 3, "seq": 11}))
    assert report.passed and report.outputs["output"].max_abs <= 1e-4


def test_default_level_all_saves_a_portable_model_and_runs_at_all(tmp_path):
    """At `all` ONNX Runtime would save its CPU-specific NCHWc convolutions; the build saves the model
    optimized at `extended` and the session options say `all`, so those are made where it is loaded."""
    import onnx

    from mlpdeploy.backends.onnxruntime.session import make_session
    from mlpdeploy.export import export_model

    assert OrtOptions().opt_level == "all"
    exported = export_model(load_model("vit-tiny"), tmp_path / "vit.onnx").model_path  # patch embedding: a Conv
    out = tmp_path / "m.ort.onnx"
    result = get_backend("onnxruntime").build(exported, out, OrtOptions(device="cpu"))
    session = json.loads(result.artifacts["session_options"].read_text())
    assert session["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert not [n.op_type for n in onnx.load(out).graph.node if n.domain == "com.microsoft.nchwc"]
    assert {n.op_type for n in onnx.load(out).graph.node} >= {"Conv", "Attention"}
    folded = tmp_path / "loaded.onnx"  # what the runtime's session makes of it on this CPU
    make_session(out, session, optimized_output=folded)
    assert [n.op_type for n in onnx.load(folded).graph.node if n.domain == "com.microsoft.nchwc"]


def test_cuda_without_gpu_is_a_clear_error():
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA execution provider")
    with pytest.raises(MlpdeployError, match="device cuda requested, but available ONNX Runtime providers are"):
        session_config(device="cuda")


def test_unknown_backend_lists_available():
    with pytest.raises(MlpdeployError, match="unknown backend 'tensorflow'; available backends: .*onnxruntime"):
        get_backend("tensorflow")


def test_external_data_model_builds_with_external_data(tmp_path, tiny_spec, monkeypatch):
    from mlpdeploy import onnx_io
    from mlpdeploy.export.torch_export import export_model

    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 1024)
    bundle = load_model(tiny_spec)
    exported = export_model(bundle, tmp_path / "big.onnx")
    out = tmp_path / "big.ort.onnx"
    get_backend("onnxruntime").build(exported.model_path, out, OrtOptions(device="cpu"))
    assert (tmp_path / "big.ort.onnx.data").exists()
    assert validate(bundle, out).passed


def test_fusion_attempt_copies_read_external_weights_from_the_model_directory(tmp_path, monkeypatch):
    """copy_model (the ORT fusions' attempt) keeps weights in external data as references; the copy
    must read them from the model's directory, not the working directory (a 2 GB build failed so)."""
    import numpy as np
    import onnx
    import onnx_ir as ir
    from onnx import TensorProto, helper, numpy_helper

    from mlpdeploy.backends.onnxruntime.passes import copy_model

    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [numpy_helper.from_array(weight, "w")])
    (tmp_path / "model").mkdir()
    onnx.save_model(helper.make_model(graph), str(tmp_path / "model" / "m.onnx"), save_as_external_data=True,
                    location="m.onnx.data", size_threshold=0)
    model = ir.load(str(tmp_path / "model" / "m.onnx"))
    assert isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)
    monkeypatch.chdir(tmp_path)  # elsewhere: a reference resolved against the working directory would not be found
    copy = copy_model(model)
    np.testing.assert_array_equal(copy.graph.initializers["w"].const_value.numpy(), weight)
