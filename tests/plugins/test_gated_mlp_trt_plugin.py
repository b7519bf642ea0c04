"""GatedMLP's TensorRT plugin: the rules without TensorRT, and the classes on TensorRT's Python plugin API.

Datacenter TensorRT is not installable here. The plugin classes are built by a factory that
takes the TensorRT module; TensorRT-RTX's bindings expose the same IPluginV3 Python API (but
no plugin layer), so the classes are exercised against them: creation from parser-style
fields, serialization round trip, dtype/format/workspace answers. Nothing is registered.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from mlpdeploy.errors import MissingExtraError
from mlpdeploy.plugins import trt_plugin_base, trt_register
from mlpdeploy.plugins.gated_mlp import trt_plugin
from mlpdeploy.plugins.gated_mlp.reference import ACTIVATIONS, gated_mlp

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.parametrize(
    "data",
    [
        "gelu_tanh",
        b"gelu_tanh",
        b"gelu_tanh\x00",
        np.frombuffer(b"gelu_tanh", dtype=np.int8),
        np.frombuffer(b"gelu_tanh\x00", dtype=np.uint8),
    ],
    ids=["str", "bytes", "bytes-nul", "int8", "uint8-nul"],
)
def test_decode_activation_field(data):
    assert trt_plugin.decode_fields({"activation": data}) == {"activation": "gelu_tanh"}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_field_round_trip(activation):
    encoded = trt_plugin_base.encode_string(activation)
    assert encoded.dtype == np.int8 and len(encoded) == len(activation)
    assert trt_plugin.decode_fields({"activation": encoded}) == {"activation": activation}


def test_bad_fields():
    with pytest.raises(ValueError, match="unknown GatedMLP activation 'swish'"):
        trt_plugin.decode_fields({"activation": b"swish"})
    with pytest.raises(ValueError, match="needs the 'activation' field"):
        trt_plugin.decode_fields({})
    with pytest.raises(ValueError, match="string plugin field"):
        trt_plugin_base.decode_string(np.array([1.5], dtype=np.float32))


def test_output_rules():
    assert trt_plugin.output_dims([2, 7, 33], [47, 21]) == [2, 7, 21]
    assert trt_plugin.output_dims(["b", 33], [47, "o"]) == ["b", "o"]
    with pytest.raises(ValueError, match="2-D"):
        trt_plugin.output_dims([2, 33], [47])
    assert trt_plugin.output_types(["HALF", "HALF", "HALF"]) == ["HALF"]


@pytest.mark.parametrize(
    ("pos", "types", "linear", "ok"),
    [
        (0, ["FLOAT"], [True], True),
        (0, ["HALF"], [True], True),
        (0, ["BF16"], [True], True),
        (0, ["INT8"], [True], False),
        (0, ["FLOAT"], [False], False),
        (1, ["HALF", "HALF"], [True, True], True),
        (1, ["HALF", "FLOAT"], [True, True], False),
        (3, ["BF16"] * 4, [True, True, True, False], False),
        (3, ["BF16"] * 4, [True] * 4, True),
    ],
)
def test_format_rules(pos, types, linear, ok):
    assert trt_plugin.supports_combination(pos, types, linear) is ok


def test_bias_slots():
    wgu, wd = (33, 94), (47, 21)
    assert trt_plugin.bias_slots(3, wgu, wd, []) == (None, None)
    assert trt_plugin.bias_slots(4, wgu, wd, [(94,)]) == (3, None)
    assert trt_plugin.bias_slots(5, wgu, wd, [(94,), (21,)]) == (3, 4)
    with pytest.raises(ValueError, match=r"b_gate_up must have shape \(94,\)"):
        trt_plugin.bias_slots(4, wgu, wd, [(21,)])
    with pytest.raises(ValueError, match=r"b_down must have shape \(21,\)"):
        trt_plugin.bias_slots(5, wgu, wd, [(94,), (94,)])
    with pytest.raises(ValueError, match="3 to 5 inputs"):
        trt_plugin.bias_slots(6, wgu, wd, [])


def test_workspace_bytes():
    assert trt_plugin.workspace_bytes([4, 128, 64], [96, 64], "HALF") == 4 * 128 * 96 * 2
    assert trt_plugin.workspace_bytes([1, 33], [47, 21], "FLOAT") == 256  # 188 bytes, aligned up


@pytest.mark.parametrize("bias", [(False, False), (True, False), (True, True)], ids=["nobias", "bgu", "bias"])
def test_run_writes_output_and_uses_workspace(bias, assert_close):
    """The enqueue body on torch tensors (Triton interpreter on CPU): flat scratch, preallocated output."""
    pytest.importorskip("triton")
    from mlpdeploy.plugins.gated_mlp.kernel import interpreting

    if not interpreting() and not torch.cuda.is_available():
        pytest.skip("no CUDA device and the Triton interpreter is off")
    device = "cpu" if interpreting() else "cuda"
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 33, generator=g)
    wgu, wd = torch.randn(33, 94, generator=g) / 6, torch.randn(47, 21, generator=g) / 7
    bgu = torch.randn(94, generator=g) if bias[0] else None
    bd = torch.randn(21, generator=g) if bias[1] else None
    args = [None if t is None else t.to(device) for t in (x, wgu, wd, bgu, bd)]
    out = torch.full((2, 3, 21), float("nan"), device=device)
    workspace = torch.empty(trt_plugin.workspace_bytes([2, 3, 33], [47, 21], "FLOAT") // 4, device=device)
    trt_plugin.run(*args, "gelu", out, workspace)
    assert_close(out.cpu().numpy(), gated_mlp(x, wgu, wd, bgu, bd, "gelu").numpy(), "float32")


@pytest.mark.skipif(HAS_TENSORRT, reason="datacenter TensorRT is installed")
def test_without_tensorrt_one_line_error():
    for call in (trt_plugin.make_creator, trt_register.register_plugins):
        with pytest.raises(MissingExtraError, match=r"^tensorrt is not installed for .*pip install 'mlpdeploy\[tensorrt\]'"):
            call()


@pytest.fixture(scope="module")
def trt_api():
    """A module with TensorRT's Python plugin API: datacenter TensorRT if present, else TensorRT-RTX's bindings."""
    if HAS_TENSORRT:
        return importlib.import_module("tensorrt")
    return pytest.importorskip("tensorrt_rtx_bindings")


def _desc(trt, dims, dtype="HALF", linear=True):
    d = trt.DynamicPluginTensorDesc()
    d.desc.type = getattr(trt.DataType, dtype)
    d.desc.format = trt.TensorFormat.LINEAR if linear else trt.TensorFormat.CHW32
    d.min = d.opt = d.max = trt.Dims(list(dims))
    return d


def test_creator_declares_fields(trt_api):
    creator = trt_plugin.make_creator(trt_api)
    assert (creator.name, creator.plugin_namespace, creator.plugin_version) == ("GatedMLP", "mlpdeploy", "1")
    assert [(f.name, f.type) for f in creator.field_names] == [("activation", trt_api.PluginFieldType.CHAR)]


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh", "none"])
def test_plugin_from_parser_fields_and_serialization_round_trip(trt_api, activation):
    trt = trt_api
    creator = trt_plugin.make_creator(trt)
    fields = trt.PluginFieldCollection(
        [trt.PluginField("activation", trt_plugin_base.encode_string(activation), trt.PluginFieldType.CHAR)]
    )
    plugin = creator.create_plugin("mlp0", fields, trt.TensorRTPhase.BUILD)
    assert (plugin.plugin_name, plugin.plugin_namespace, plugin.plugin_version) == ("GatedMLP", "mlpdeploy", "1")
    assert plugin.num_outputs == 1 and plugin.activation == activation
    serialized = plugin.get_fields_to_serialize()
    revived = creator.create_plugin("mlp0", serialized, trt.TensorRTPhase.RUNTIME)
    assert revived.activation == activation and revived.phase == trt.TensorRTPhase.RUNTIME
    cloned = plugin.clone()
    assert cloned is not plugin and cloned.activation == activation
    assert plugin.attach_to_context(None).activation == activation
    assert plugin.get_capability_interface(None) is plugin


def test_plugin_build_answers(trt_api):
    trt = trt_api
    plugin = trt_plugin.plugin_class(trt)("relu")
    assert plugin.get_output_data_types([trt.DataType.BF16] * 5) == [trt.DataType.BF16]
    x, wgu, wd, out = _desc(trt, (4, 128, 64)), _desc(trt, (64, 192)), _desc(trt, (96, 64)), _desc(trt, (4, 128, 64))
    assert plugin.supports_format_combination(0, [x, wgu, wd, out], 3)
    assert plugin.supports_format_combination(3, [x, wgu, wd, out], 3)
    assert not plugin.supports_format_combination(2, [x, wgu, _desc(trt, (96, 64), "FLOAT"), out], 3)
    assert not plugin.supports_format_combination(0, [_desc(trt, (4, 128, 64), linear=False)], 3)
    assert plugin.get_workspace_size([x, wgu, wd], [out]) == 4 * 128 * 96 * 2


def test_creator_refuses_unknown_activation(trt_api):
    trt = trt_api
    creator = trt_plugin.make_creator(trt)
    fields = trt.PluginFieldCollection(
        [trt.PluginField("activation", trt_plugin_base.encode_string("swish"), trt.PluginFieldType.CHAR)]
    )
    with pytest.raises(ValueError, match="unknown GatedMLP activation"):
        creator.create_plugin("mlp0", fields, trt.TensorRTPhase.BUILD)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_device_tensor_wraps_cuda_pointer(dtype):
    base = torch.arange(12, device="cuda").to(getattr(torch, dtype))
    view = trt_plugin_base.device_tensor(base.data_ptr(), (3, 4), dtype)
    assert view.dtype == base.dtype and view.shape == (3, 4) and view.data_ptr() == base.data_ptr()
    view[1, 2] = 100
    assert base[6].item() == 100
