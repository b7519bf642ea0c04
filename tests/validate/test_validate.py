"""Validation: per-output errors, pass/fail, perturbed weights fail, inputs files."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.source import load_model
from mlpdeploy.validate import ValidateOptions, validate


@pytest.fixture(scope="module")
def bundle(tiny_spec):
    return load_model(tiny_spec)


def _perturbed_copy(src, dst, scale=0.05):
    model = onnx.load(str(src))
    for init in model.graph.initializer:
        if init.name == "mlp.down_proj.weight_t":
            w = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(w + scale * np.abs(w).max(), init.name))
    onnx.save(model, str(dst))
    (dst.parent / (dst.name[:-5] + ".manifest.json")).write_text((src.parent / (src.name[:-5] + ".manifest.json")).read_text())


def test_same_model_passes_with_metrics(bundle, tiny_export):
    report = validate(bundle, tiny_export.model_path)
    errors = report.outputs["output"]
    assert report.passed and errors.passed
    assert errors.max_abs < 1e-5 and errors.cosine > 0.999999
    assert errors.mean_abs <= errors.max_abs


def test_perturbed_weights_fail(bundle, tiny_export, tmp_path):
    bad = tmp_path / "bad.onnx"
    _perturbed_copy(tiny_export.model_path, bad)
    report = validate(bundle, bad)
    assert not report.passed
    assert report.outputs["output"].max_abs > 1e-3


def test_onnx_reference(tiny_export):
    report = validate(tiny_export.model_path, tiny_export.model_path, ValidateOptions(dims={"batch": 3}))
    assert report.passed and report.outputs["output"].max_abs == 0.0


def test_polygraphy_inputs_file(bundle, tiny_export, tmp_path):
    from polygraphy.json import save_json

    feed = {"input_ids": np.arange(14, dtype=np.int64).reshape(2, 7)}
    path = tmp_path / "inputs.json"
    save_json([feed], str(path))
    report = validate(bundle, tiny_export.model_path, ValidateOptions(inputs=path))
    assert report.inputs == {"input_ids": [2, 7]} and report.passed


@pytest.mark.parametrize(
    "feed, message",
    [
        ({"input_ids": np.zeros((2, 3, 4), np.int64)}, "has shape [2, 3, 4], but the manifest expects [batchxseq]"),
        ({"tokens": np.zeros((2, 3), np.int64)}, "do not match the model's inputs ['input_ids']"),
        ({"input_ids": np.zeros((2, 3), np.float32)}, "has dtype float32, but the manifest expects int64"),
        ({"input_ids": np.zeros((2, 5000), np.int64)}, "dim seq=5000 is outside the exported range [1, 4096]"),
    ],
)
def test_inputs_not_matching_manifest(bundle, tiny_export, tmp_path, feed, message):
    path = tmp_path / "in.npz"
    np.savez(path, **feed)
    with pytest.raises(MlpdeployError) as info:
        validate(bundle, tiny_export.model_path, ValidateOptions(inputs=path))
    assert message in str(info.value)


def test_unknown_dim_is_rejected(bundle, tiny_export):
    with pytest.raises(MlpdeployError, match="unknown dim.*heads.*dynamic dims are batch, seq"):
        validate(bundle, tiny_export.model_path, ValidateOptions(dims={"heads": 2}))
