"""The KAN ops' TensorRT plugins (GroupRational, BSplineKAN, FANLayer): rules without TensorRT, and
the classes on TensorRT's Python plugin API (datacenter TensorRT if present, else TensorRT-RTX's
bindings, which share it but have no plugin layer: nothing is registered or run in an engine)."""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest
import torch

from mlpdeploy.errors import OpError
from mlpdeploy.plugins import trt_plugin_base, trt_register
from mlpdeploy.plugins.bspline_kan import trt_plugin as bspline
from mlpdeploy.plugins.fan_layer import trt_plugin as fan
from mlpdeploy.plugins.group_rational import trt_plugin as rational
from mlpdeploy.plugins.registry import OPS

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_field_rules():
    assert rational.decode_fields({"form": trt_plugin_base.encode_string("B")}) == {"form": "B"}
    assert rational.decode_fields({}) == {"form": "A"}
    with pytest.raises(OpError, match="unknown GroupRational form 'C'"):
        rational.decode_fields({"form": b"C"})
    assert fan.decode_fields({"activation": np.frombuffer(b"silu\x00", dtype=np.uint8)}) == {"activation": "silu"}
    assert fan.decode_fields({}) == {"activation": "gelu"}
    with pytest.raises(OpError, match="unknown FANLayer activation"):
        fan.decode_fields({"activation": b"tanh"})
    assert bspline.decode_fields({}) == {}


def test_shape_rules():
    assert rational.check_dims((2, 7, 24), (1, 6), (8, 4), "A") == (8, 5, 4)
    with pytest.raises(OpError, match="not divisible into 8 groups"):
        rational.check_dims((2, 20), (1, 6), (8, 4), "A")
    assert bspline.output_dims([2, 7, 64], [64, 32]) == [2, 7, 32]
    assert fan.output_width([64, 16], [64, 32]) == 64


@pytest.mark.parametrize(("pos", "types", "linear", "ok"), [
    (0, ["HALF"], [True], True), (0, ["INT8"], [True], False), (0, ["FLOAT"], [False], False),
    (2, ["BF16", "BF16", "BF16"], [True] * 3, True), (1, ["HALF", "FLOAT"], [True, True], False),
])
def test_format_rule(pos, types, linear, ok):
    for module in (rational, bspline, fan):
        assert module.supports_combination(pos, types, linear) is ok


def test_registry_lists_every_creator():
    assert {"GroupRational", "BSplineKAN", "FANLayer"} <= set(OPS)


@pytest.mark.skipif(HAS_TENSORRT, reason="datacenter TensorRT is installed")
def test_without_tensorrt_one_line_error():
    with pytest.raises(Exception, match=r"^tensorrt is not installed"):
        trt_register.creators()


@pytest.fixture(scope="module")
def trt_api():
    if HAS_TENSORRT:
        return importlib.import_module("tensorrt")
    return pytest.importorskip("tensorrt_rtx_bindings")


def _desc(trt, dims, dtype="HALF"):
    d = trt.DynamicPluginTensorDesc()
    d.desc.type = getattr(trt.DataType, dtype)
    d.desc.format = trt.TensorFormat.LINEAR
    d.min = d.opt = d.max = trt.Dims(list(dims))
    return d


@pytest.mark.parametrize(("module", "fields", "attr", "value"), [
    (rational, {"form": "B"}, "form", "B"), (fan, {"activation": "relu"}, "activation", "relu"), (bspline, {}, None, None),
], ids=["GroupRational", "FANLayer", "BSplineKAN"])
def test_plugin_creation_and_serialization(trt_api, module, fields, attr, value):
    trt = trt_api
    creator = module.make_creator(trt)
    assert (creator.name, creator.plugin_namespace, creator.plugin_version) == (module.PLUGIN_NAME, "mlpdeploy", "1")
    assert [f.name for f in creator.field_names] == list(module.FIELD_TYPES)
    collection = trt.PluginFieldCollection([trt.PluginField(k, trt_plugin_base.encode_string(v), trt.PluginFieldType.CHAR) for k, v in fields.items()])
    plugin = creator.create_plugin("op0", collection, trt.TensorRTPhase.BUILD)
    assert plugin.plugin_name == module.PLUGIN_NAME and plugin.num_outputs == 1
    revived = creator.create_plugin("op0", plugin.get_fields_to_serialize(), trt.TensorRTPhase.RUNTIME)
    if attr:
        assert getattr(plugin, attr) == value and getattr(revived, attr) == value and getattr(plugin.clone(), attr) == value
    assert plugin.get_output_data_types([trt.DataType.HALF] * 3) == [trt.DataType.HALF]
    assert plugin.get_workspace_size([], []) == 0


def test_plugin_format_answers(trt_api):
    trt = trt_api
    plugin = rational.plugin_class(trt)("A")
    x, num, den, out = _desc(trt, (4, 64)), _desc(trt, (1, 6)), _desc(trt, (8, 4)), _desc(trt, (4, 64))
    assert plugin.supports_format_combination(3, [x, num, den, out], 3)
    assert not plugin.supports_format_combination(2, [x, num, _desc(trt, (8, 4), "FLOAT"), out], 3)


def test_run_bodies_on_torch_tensors():
    """The enqueue bodies on torch tensors (Triton interpreter on CPU), writing into given outputs."""
    pytest.importorskip("triton")
    from mlpdeploy.plugins.bspline_kan.onnx_function import random_weights as kan_weights
    from mlpdeploy.plugins.bspline_kan.reference import bspline_kan
    from mlpdeploy.plugins.fan_layer.onnx_function import random_weights as fan_weights
    from mlpdeploy.plugins.fan_layer.reference import fan_layer
    from mlpdeploy.plugins.gated_mlp.kernel import interpreting
    from mlpdeploy.plugins.group_rational.onnx_function import random_coefficients
    from mlpdeploy.plugins.group_rational.reference import group_rational

    if not interpreting() and not torch.cuda.is_available():
        pytest.skip("no CUDA device and the Triton interpreter is off")
    device = "cpu" if interpreting() else "cuda"
    x = torch.randn(3, 16, device=device)
    num, den = (torch.from_numpy(a).to(device) for a in random_coefficients(4, 5, 4))
    out = torch.full_like(x, float("nan"))
    rational.run(x, num, den, "B", out)
    torch.testing.assert_close(out.cpu(), group_rational(x.cpu(), num.cpu(), den.cpu(), "B"), atol=1e-5, rtol=1e-5)
    w = [torch.from_numpy(v).to(device) for v in kan_weights(16, 5).values()]
    out = torch.full((3, 5), float("nan"), device=device)
    bspline.run(x, *w, out)
    torch.testing.assert_close(out.cpu(), bspline_kan(x.cpu(), *[t.cpu() for t in w]), atol=1e-5, rtol=1e-5)
    w = [torch.from_numpy(v).to(device) for v in fan_weights(16, 3, 4).values()]
    out = torch.full((3, 10), float("nan"), device=device)
    fan.run(x, *w, "gelu", out)
    torch.testing.assert_close(out.cpu(), fan_layer(x.cpu(), *[t.cpu() for t in w], "gelu"), atol=1e-5, rtol=1e-5)
