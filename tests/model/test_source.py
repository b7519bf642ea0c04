"""MODEL argument resolution: every accepted form, and a one-line error for everything else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.source import load_model

FIXTURES = Path(__file__).parents[1] / "fixtures"


def test_factory_tuple_names_inputs_after_forward(tiny_spec):
    bundle = load_model(tiny_spec)
    assert bundle.kind == "factory"
    assert list(bundle.example_inputs) == ["input_ids"]
    spec = bundle.inputs[0]
    assert spec.shape == ["batch", "seq"] and spec.dtype == "int64"
    assert spec.low == 0 and spec.high <= 50


def test_factory_dict_inputs():
    bundle = load_model(f"{FIXTURES / 'tiny_mlp.py'}:build_dict")
    assert list(bundle.example_inputs) == ["input_ids"]


def test_zoo_name_resolves():
    bundle = load_model("llama-tiny")
    assert bundle.kind == "zoo" and bundle.source == "llama-tiny"
    assert bundle.num_parameters > 0


def test_pt2_program(tmp_path, tiny_spec):
    bundle = load_model(tiny_spec)
    program = torch.export.export(bundle.module, tuple(bundle.example_inputs.values()))
    path = tmp_path / "m.pt2"
    torch.export.save(program, str(path))
    loaded = load_model(str(path))
    assert loaded.kind == "pt2"
    ids = bundle.example_inputs["input_ids"]
    torch.testing.assert_close(loaded.module(ids), bundle.module(ids))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no-such-model", "cannot find model 'no-such-model'; MODEL must be a zoo name"),
        ("missing_file.py:build", "model file missing_file.py not found"),
        (f"{FIXTURES / 'tiny_mlp.py'}:nope", "has no function 'nope'"),
        (f"{FIXTURES / 'tiny_mlp.py'}:build_wrong", "returned str; a factory must return (module, example_inputs)"),
        (f"{FIXTURES / 'tiny_mlp.py'}:build_raises", "raised RuntimeError: checkpoint missing"),
        (f"{FIXTURES / 'tiny_mlp.py'}", "name the factory function too"),
        (str(FIXTURES), "is a directory without config.json"),
        ("model.onnx", "is an ONNX file; MODEL must be a torch model"),
    ],
)
def test_bad_model_specs(spec, message):
    with pytest.raises(MlpdeployError) as info:
        load_model(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_user_module_name_does_not_depend_on_the_hash_seed():
    """The module name a factory file is imported under appears in every exported node's metadata:
    it was `hash()`-salted (per process), so two exports of one file differed byte for byte
    (found by tests/test_determinism.py). It is now a digest of the file's path."""
    import hashlib

    from mlpdeploy.model.source import _import_file

    path = (FIXTURES / "tiny_mlp.py").resolve()
    assert _import_file(path).__name__ == f"mlpdeploy_user_{hashlib.sha256(str(path).encode()).hexdigest()[:16]}"
