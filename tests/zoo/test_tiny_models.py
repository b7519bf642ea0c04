"""The five random-weight zoo models: build, shapes, determinism, and ONNX export that
matches torch in ONNX Runtime at batch sizes and sequence lengths other than the example's."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from mlpdeploy.export.torch_export import dynamic_shapes
from mlpdeploy.zoo import ZOO

TINY = ["llama-tiny", "opt-relu-tiny", "vit-tiny", "mixer-tiny", "gmlp-tiny"]
TOKEN_MODELS = {"llama-tiny", "opt-relu-tiny"}


@pytest.fixture(scope="module", params=TINY)
def exported(request):
    """(name, bundle, ORT session) with the model exported once per module."""
    bundle = ZOO[request.param].build()
    program = torch.onnx.export(
        bundle.module, tuple(bundle.example_inputs.values()), dynamo=True,
        dynamic_shapes=dynamic_shapes(bundle), verbose=False,
    )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(program.model_proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return request.param, bundle, session


@pytest.mark.parametrize("name", TINY)
def test_builds_with_contract(name):
    bundle = ZOO[name].build()
    assert not bundle.module.training
    assert bundle.output_names == ["logits"] and bundle.source == name and bundle.kind == "zoo"
    assert 10_000 < bundle.num_parameters <= 1_000_000
    assert list(bundle.example_inputs) == [s.name for s in bundle.inputs]
    for spec, x in zip(bundle.inputs, bundle.example_inputs.values()):
        assert list(x.shape) == spec.example_shape and 1 not in spec.example_shape
        assert spec.shape[0] == "batch"
    with torch.no_grad():
        out = bundle.module(*bundle.example_inputs.values())
    if name in TOKEN_MODELS:
        spec = bundle.inputs[0]
        assert spec.shape == ["batch", "seq"] and (spec.low, spec.high) == (0, 256)
        assert bundle.dim_range("seq")[1] == bundle.module.config.max_positions
        assert out.shape == (2, 8, 256)
    else:
        assert bundle.inputs[0].shape == ["batch", 3, 32, 32]
        assert out.shape == (2, 10)
    assert torch.isfinite(out).all() and out.std() > 1e-3  # random weights still give a signal


@pytest.mark.parametrize("name", TINY)
def test_weights_are_deterministic(name):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = ZOO[name].build().module.state_dict()
    after_build = torch.rand(1)
    b = ZOO[name].build().module.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(before, after_build), "building must not disturb the caller's RNG"


def _feeds(name, bundle):
    if name in TOKEN_MODELS:
        gen = torch.Generator().manual_seed(7)
        return [torch.randint(0, 256, (b, s), generator=gen) for b, s in [(1, 5), (3, 17), (1, 128)]]
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(b, 3, 32, 32, generator=gen) for b in (1, 3)]


def test_onnx_matches_torch_at_other_shapes(exported):
    name, bundle, session = exported
    (input_name,) = [i.name for i in session.get_inputs()]
    for x in _feeds(name, bundle):
        with torch.no_grad():
            ref = bundle.module(x).numpy()
        (got,) = session.run(None, {input_name: x.numpy()})
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0, err_msg=f"{name} at {tuple(x.shape)}")


def test_onnx_keeps_dynamic_axes(exported):
    name, _, session = exported
    shape = session.get_inputs()[0].shape
    assert isinstance(shape[0], str)
    assert isinstance(shape[1], str) == (name in TOKEN_MODELS)
