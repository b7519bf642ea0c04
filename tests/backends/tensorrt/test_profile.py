"""Optimization profiles: derived from the manifest, overridden by --shapes; good and bad inputs."""

from __future__ import annotations

import onnx_ir as ir
import pytest

from mlpdeploy.backends.tensorrt.profile import DEFAULT_MAX_DIM, derive_profile, parse_shapes, profile_to_json
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import InputSpec
from mlpdeploy.model.manifest import Manifest


def _model(*inputs: tuple[str, list]) -> ir.Model:
    values = [ir.Value(name=n, shape=ir.Shape(s), type=ir.TensorType(ir.DataType.INT64)) for n, s in inputs]
    node = ir.node("Identity", [values[0]])
    return ir.Model(ir.Graph(values, node.outputs, nodes=[node], opset_imports={"": 20}), ir_version=10)


def _lm():
    """A two-input LM: ids and mask share `batch` and `seq`; a static feature dim on a third input."""
    model = _model(("input_ids", ["batch", "seq"]), ("attention_mask", ["batch", "seq"]), ("feats", ["batch", 4]))
    manifest = Manifest(
        source="test",
        kind="factory",
        opset=20,
        inputs=[
            InputSpec("input_ids", "int64", ["batch", "seq"], [2, 8]),
            InputSpec("attention_mask", "int64", ["batch", "seq"], [2, 8]),
            InputSpec("feats", "float32", ["batch", 4], [2, 4]),
        ],
        outputs=[],
        dims={"batch": [1, 64], "seq": [1, 4096]},
    )
    return model, manifest


def test_parse_shapes_dims_and_full_shapes():
    shapes = parse_shapes(["batch=1:4:32", " input_ids = 1x1:2X16:8x512 "])
    assert shapes == {"batch": ([1], [4], [32]), "input_ids": ([1, 1], [2, 16], [8, 512])}


@pytest.mark.parametrize(
    "text, message",
    [
        ("batch", "must be NAME=MIN:OPT:MAX"),
        ("batch=1:4", "must be NAME=MIN:OPT:MAX"),
        ("=1:2:3", "must be NAME=MIN:OPT:MAX"),
        ("batch=1:four:8", "sizes must be integers"),
        ("x=1x2:1:4x4", "MIN, OPT and MAX must have the same rank"),
        ("batch=4:2:8", "shape range for batch is 4:2:8; it needs 1 <= min <= opt <= max"),
        ("batch=0:1:8", "it needs 1 <= min"),
        ("x=1x8:1x4:1x16", "shape range for x axis 1 is 8:4:16"),
    ],
)
def test_parse_shapes_rejects(text, message):
    with pytest.raises(MlpdeployError, match=message):
        parse_shapes([text])


def test_parse_shapes_rejects_a_name_given_twice():
    with pytest.raises(MlpdeployError, match="names 'batch' twice"):
        parse_shapes(["batch=1:2:4", "batch=1:2:8"])


def test_defaults_from_manifest():
    model, manifest = _lm()
    profile = derive_profile(model, manifest)
    # batch: min 1, opt = example 2, max = manifest bound 64 (below the cap)
    # seq: min 1, opt = example 8, max = manifest 4096 capped at DEFAULT_MAX_DIM
    assert profile["input_ids"] == ([1, 1], [2, 8], [64, DEFAULT_MAX_DIM])
    assert profile["attention_mask"] == profile["input_ids"]
    assert profile["feats"] == ([1, 4], [2, 4], [64, 4])
    assert profile_to_json(profile)["feats"] == {"min": [1, 4], "opt": [2, 4], "max": [64, 4]}


def test_defaults_without_manifest_use_onnx_dims():
    model, _ = _lm()
    profile = derive_profile(model, None)
    assert profile["input_ids"] == ([1, 1], [1, 1], [DEFAULT_MAX_DIM, DEFAULT_MAX_DIM])
    assert profile["feats"] == ([1, 4], [1, 4], [DEFAULT_MAX_DIM, 4])


def test_opt_is_clamped_into_the_manifest_range():
    model, manifest = _lm()
    manifest.dims["seq"] = [16, 32]  # the example's 8 lies below the exported range
    assert derive_profile(model, manifest)["input_ids"] == ([1, 16], [2, 16], [64, 32])


def test_dim_override_applies_to_every_input():
    model, manifest = _lm()
    profile = derive_profile(model, manifest, parse_shapes(["seq=1:64:1024"]))
    assert profile["input_ids"] == ([1, 1], [2, 64], [64, 1024])
    assert profile["attention_mask"] == ([1, 1], [2, 64], [64, 1024])


def test_input_override_must_agree_with_inputs_sharing_its_dims():
    model, manifest = _lm()
    with pytest.raises(MlpdeployError, match="dim seq is 1:8:256 in input input_ids but 1:16:512 in input attention_mask"):
        derive_profile(model, manifest, parse_shapes(["attention_mask=1x1:2x16:64x512"]))
    profile = derive_profile(model, manifest, parse_shapes(["input_ids=1x1:2x16:64x512", "attention_mask=1x1:2x16:64x512"]))
    assert profile["input_ids"] == ([1, 1], [2, 16], [64, 512])


@pytest.mark.parametrize(
    "override, message",
    [
        ("tokens=1:2:3", "--shapes names unknown tokens; inputs are attention_mask, feats, input_ids and dynamic dims are batch, seq"),
        ("input_ids=1:2:3", "--shapes input_ids has rank 1, but input input_ids has rank 2"),
        ("feats=1x4:2x8:4x8", r"axis 1 is static \(4\) in the model \(\[batch, 4\]\), but was given 4:8:8"),
        ("batch=1x1:2x2:3x3", "batch is a dim name: give single sizes"),
    ],
)
def test_override_errors(override, message):
    model, manifest = _lm()
    with pytest.raises(MlpdeployError, match=message):
        derive_profile(model, manifest, parse_shapes([override]))
