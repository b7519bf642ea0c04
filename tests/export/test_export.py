"""Export: dynamic dims, scope metadata on nodes, weight names, manifest contents."""

from __future__ import annotations

import json

import onnx
import pytest

from mlpdeploy.model.manifest import load_manifest
from mlpdeploy.scopes import SCOPES_KEY
from mlpdeploy.validate import ValidateOptions, validate


def test_manifest_records_inputs_outputs_and_versions(tiny_export):
    manifest = load_manifest(tiny_export.manifest_path)
    assert manifest.source.endswith("tiny_mlp.py:build")
    assert manifest.opset == 20
    assert [(i.name, i.dtype, i.shape) for i in manifest.inputs] == [("input_ids", "int64", ["batch", "seq"])]
    assert manifest.outputs == [{"name": "output", "dtype": "float32", "shape": ["batch", "seq", 50]}]
    assert set(manifest.versions) >= {"torch", "onnx", "mlpdeploy"}
    assert manifest.dims == {"batch": [1, 4096], "seq": [1, 4096]}


def test_graph_has_symbolic_dims_and_opset(tiny_export):
    model = onnx.load(str(tiny_export.model_path))
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq"]
    assert {o.domain: o.version for o in model.opset_import}[""] == 20


def test_scope_metadata_on_every_compute_node(tiny_export):
    model = onnx.load(str(tiny_export.model_path))
    scoped = [n for n in model.graph.node if any(p.key == SCOPES_KEY for p in n.metadata_props)]
    assert len(scoped) == len(model.graph.node)
    matmul_scopes = [json.loads(next(p.value for p in n.metadata_props if p.key == SCOPES_KEY).replace("'", '"')) for n in model.graph.node if n.op_type == "MatMul"]
    assert any("mlp.gate_proj" in s for s in matmul_scopes)


def test_folded_weights_keep_module_names(tiny_export):
    names = {i.name for i in onnx.load(str(tiny_export.model_path)).graph.initializer}
    assert {"mlp.gate_proj.weight_t", "mlp.up_proj.weight_t", "mlp.down_proj.weight_t", "head.weight_t"} <= names


@pytest.mark.parametrize("batch, seq", [(1, 5), (3, 5), (1, 23), (3, 23)])
def test_exported_model_runs_at_other_shapes(tiny_export, tiny_spec, batch, seq):
    from mlpdeploy.model.source import load_model

    report = validate(load_model(tiny_spec), tiny_export.model_path, ValidateOptions(dims={"batch": batch, "seq": seq}))
    assert report.inputs == {"input_ids": [batch, seq]}
    assert report.passed
    assert report.outputs["output"].max_abs <= 1e-4


def test_big_models_use_external_data(tmp_path, tiny_spec, monkeypatch):
    """Past EXTERNAL_DATA_THRESHOLD (64 MiB) weights go to `<name>.data` (threshold lowered to test it)."""
    from mlpdeploy import onnx_io
    from mlpdeploy.export.torch_export import export_model
    from mlpdeploy.model.source import load_model

    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 1024)
    bundle = load_model(tiny_spec)
    result = export_model(bundle, tmp_path / "big.onnx")
    data = tmp_path / "big.onnx.data"
    proto = onnx.load(str(result.model_path), load_external_data=False)
    head = next(i for i in proto.graph.initializer if i.name == "head.weight_t")
    assert head.data_location == onnx.TensorProto.EXTERNAL and data.stat().st_size >= 16 * 50 * 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.manifest.json", "big.onnx", "big.onnx.data"]
    report = validate(bundle, result.model_path)
    assert report.passed
