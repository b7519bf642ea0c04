"""IPluginV3 plumbing shared by every mlpdeploy TensorRT plugin.

Datacenter TensorRT (≥ 10.9) is imported lazily through `import_tensorrt()`; the plugin classes are
built by factories that take the TensorRT module, so the same code binds to `tensorrt` on a
GPU machine (and, for unit tests of the Python side, to any module with the same plugin API,
such as TensorRT-RTX's bindings). Everything here that does not need TensorRT — string field
encoding, dtype names, raw device pointers as torch tensors — is a plain function.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from mlpdeploy.contract import BFLOAT16_BITS, PLUGIN_NAMESPACE, PLUGIN_VERSION, TRT_DTYPES, numpy_dtype
from mlpdeploy.errors import MlpdeployError, OpError, require

# The TensorRT types mlpdeploy's plugins compute in → torch dtype name, and its size in bytes.
TORCH_DTYPES = {name: TRT_DTYPES[name] for name in ("FLOAT", "HALF", "BF16")}
ITEMSIZE = {name: numpy_dtype(dtype).itemsize for name, dtype in TORCH_DTYPES.items()}
_TYPESTR = {"uint8": "|u1", "float32": "<f4", "float16": "<f2", "int16": "<i2", "int32": "<i4", "int64": "<i8", "int8": "|i1"}


MIN_TENSORRT = (10, 9)  # IPluginV3 Python plugins, picked over a local function by plugin_namespace


def check_tensorrt_version(version: str) -> None:
    """A one-line error for TensorRT older than MIN_TENSORRT."""
    numbers = [int(n) for n in re.findall(r"\d+", version)[:2]]
    if tuple(numbers) < MIN_TENSORRT:
        want = ".".join(map(str, MIN_TENSORRT))
        raise MlpdeployError(
            f"TensorRT {version} is too old for mlpdeploy, which needs >= {want} (IPluginV3 Python "
            f"plugins picked by plugin_namespace); pip install -U 'mlpdeploy[tensorrt]'"
        )


def import_tensorrt(purpose: str = "mlpdeploy's TensorRT plugins (datacenter TensorRT >= 10.9)"):
    """The datacenter TensorRT module (>= 10.9), or a one-line error naming the extra to install."""
    trt = require("tensorrt", "tensorrt", purpose)
    check_tensorrt_version(trt.__version__)
    return trt


def encode_string(value: str) -> np.ndarray:
    """A string plugin field's data: its UTF-8 bytes as int8 (no terminator), as the ONNX parser passes it."""
    return np.frombuffer(value.encode("utf-8"), dtype=np.int8).copy()


def decode_string(data: Any) -> str:
    """A string plugin field back to str, whatever form TensorRT hands it in (bytes, str, int8/uint8 array)."""
    if isinstance(data, str):
        text = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        text = bytes(data).decode("utf-8")
    else:
        array = np.asarray(data)
        if array.dtype.kind not in "iuS":
            raise OpError(f"a string plugin field must be bytes or an int8 array, got dtype {array.dtype}")
        text = array.astype(np.uint8).tobytes().decode("utf-8") if array.dtype.kind in "iu" else array.tobytes().decode("utf-8")
    return text.rstrip("\x00")


def field_dict(fields: Iterable[Any]) -> dict[str, Any]:
    """A PluginFieldCollection (or any iterable of objects with .name and .data) as {name: data}."""
    return {f.name: f.data for f in fields}


def dtype_name(trt_dtype: Any) -> str:
    """TensorRT DataType member name (FLOAT, HALF, BF16, ...), for rules written without TensorRT."""
    return getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])


def volume(dims: Iterable[int]) -> int:
    return math.prod(int(d) for d in dims)


class _CudaArray:
    """A raw CUDA pointer described by __cuda_array_interface__ (v3, no stream sync requested)."""

    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str):
        self.__cuda_array_interface__ = {
            "shape": tuple(int(s) for s in shape),
            "typestr": typestr,
            "data": (int(ptr), False),
            "strides": None,
            "version": 3,
        }


def device_tensor(ptr: int, shape: Iterable[int], dtype: str):
    """A contiguous CUDA torch tensor over memory TensorRT owns (no copy). `dtype` is a torch dtype name."""
    import torch

    shape = tuple(int(s) for s in shape)
    if dtype == "bfloat16":  # __cuda_array_interface__ has no bfloat16 typestr: view its 16 bits
        return device_tensor(ptr, shape, BFLOAT16_BITS).view(torch.bfloat16)
    if volume(shape) == 0:
        return torch.empty(shape, dtype=getattr(torch, dtype), device="cuda")
    return torch.as_tensor(_CudaArray(ptr, shape, _TYPESTR[dtype]), device="cuda")


@functools.cache
def plugin_base(trt) -> type:
    """The base class of mlpdeploy's Python IPluginV3 plugins, bound to one TensorRT module.

    It implements the boilerplate (capability interfaces, identity, clone, context attach,
    serialization from `fields()`); an op subclass sets PLUGIN_NAME and implements
    `fields()`, get_output_data_types, get_output_shapes, supports_format_combination,
    get_workspace_size and enqueue.
    """

    class MlpdeployPlugin(trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime):
        PLUGIN_NAME = ""
        NUM_OUTPUTS = 1

        def __init__(self, phase=None):
            trt.IPluginV3.__init__(self)
            trt.IPluginV3OneCore.__init__(self)
            trt.IPluginV3OneBuild.__init__(self)
            trt.IPluginV3OneRuntime.__init__(self)
            self.num_outputs = self.NUM_OUTPUTS
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_name = self.PLUGIN_NAME
            self.plugin_version = PLUGIN_VERSION
            self.timing_cache_id = ""
            self.phase = phase

        # An abstract method by convention: abc.ABCMeta cannot be mixed into TensorRT's pybind classes.
        def fields(self) -> dict[str, Any]:  # pragma: no cover - interface
            raise NotImplementedError(f"{type(self).__name__} must implement fields() (the plugin's serialized attributes)")

        def get_capability_interface(self, type):
            return self

        def get_fields_to_serialize(self):
            return trt.PluginFieldCollection([make_field(trt, k, v) for k, v in self.fields().items()])

        def configure_plugin(self, inp, out):
            return None

        def on_shape_change(self, inp, out):
            return None

        def get_valid_tactics(self):
            return []

        def set_tactic(self, tactic):
            return None

        def attach_to_context(self, context):
            return self.clone()

        def clone(self):
            cloned = type(self)(**self.fields(), phase=self.phase)
            return cloned

    return MlpdeployPlugin


def make_field(trt, name: str, value: Any):
    """A trt.PluginField from a Python value: str → CHAR, int → INT32, float → FLOAT32."""
    if isinstance(value, str):
        return trt.PluginField(name, encode_string(value), trt.PluginFieldType.CHAR)
    if isinstance(value, (bool, int)):
        return trt.PluginField(name, np.array([int(value)], dtype=np.int32), trt.PluginFieldType.INT32)
    if isinstance(value, float):
        return trt.PluginField(name, np.array([value], dtype=np.float32), trt.PluginFieldType.FLOAT32)
    raise TypeError(f"plugin field {name}={value!r}: only str, int and float are supported")


def creator_class(trt, plugin_cls: type, field_types: dict[str, str], decode) -> type:
    """An IPluginCreatorV3One class for `plugin_cls`; `decode(fields: dict) -> kwargs` builds its arguments.

    `field_types` maps each field the ONNX parser should read from the node's attributes to a
    PluginFieldType member name (CHAR for strings).
    """

    class Creator(trt.IPluginCreatorV3One):
        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name = plugin_cls.PLUGIN_NAME
            self.plugin_namespace = PLUGIN_NAMESPACE
            self.plugin_version = PLUGIN_VERSION
            self.field_names = trt.PluginFieldCollection(
                [trt.PluginField(n, np.array([]), getattr(trt.PluginFieldType, t)) for n, t in field_types.items()]
            )

        def create_plugin(self, name, fc, phase):
            return plugin_cls(**decode(field_dict(fc)), phase=phase)

    Creator.__name__ = Creator.__qualname__ = f"{plugin_cls.PLUGIN_NAME}PluginCreator"
    return Creator


# ---- shared by the ops whose tensors all take x's type (GroupRational, BSplineKAN, FANLayer)

FLOAT_TYPES = ("FLOAT", "HALF", "BF16")


def one_float_type(pos: int, types, linear) -> bool:
    """Format rule: every tensor LINEAR; x (position 0) FLOAT, HALF or BF16; every other input and
    the output x's type (one kernel instantiation per dtype)."""
    if not linear[pos]:
        return False
    return types[0] in FLOAT_TYPES if pos == 0 else types[pos] == types[0]


def format_answer(trt, pos: int, in_out, rule) -> bool:
    """IPluginV3OneBuild.supports_format_combination through a rule on (pos, type names, linear flags)."""
    descs = [d.desc for d in in_out[: pos + 1]]
    return rule(pos, [dtype_name(d.type) for d in descs], [d.format == trt.TensorFormat.LINEAR for d in descs])


def enqueue_tensors(input_desc, output_desc, inputs, outputs):
    """(input dims, input tensors, output tensor) over TensorRT's buffers, all in x's type."""
    dtype = TORCH_DTYPES[dtype_name(input_desc[0].type)]
    dims = [tuple(d.dims) for d in input_desc]
    tensors = [device_tensor(p, s, dtype) for p, s in zip(inputs, dims)]
    return dims, tensors, device_tensor(outputs[0], tuple(output_desc[0].dims), dtype)


def on_stream(stream):
    """A context running torch work on TensorRT's CUDA stream."""
    import torch

    return torch.cuda.stream(torch.cuda.ExternalStream(int(stream)))


@functools.cache
def same_type_plugin_base(trt) -> type:
    """The base of plugins whose tensors all take x's type (`one_float_type`) and that need no
    workspace: a subclass sets PLUGIN_NAME and implements `fields()`, `get_output_shapes` and
    `compute(dims, tensors, out)` (torch tensors over TensorRT's buffers, run on its stream)."""

    class SameTypePlugin(plugin_base(trt)):
        def get_output_data_types(self, input_types):
            return [input_types[0]]

        def supports_format_combination(self, pos, in_out, num_inputs):
            return format_answer(trt, pos, in_out, one_float_type)

        def get_workspace_size(self, inputs, outputs):
            return 0

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            dims, tensors, out = enqueue_tensors(input_desc, output_desc, inputs, outputs)
            with on_stream(stream):
                self.compute(dims, tensors, out)
            return 0

        # An abstract method by convention (see MlpdeployPlugin.fields).
        def compute(self, dims, tensors, out) -> None:  # pragma: no cover - interface
            raise NotImplementedError(f"{type(self).__name__} must implement compute(dims, tensors, out)")

    return SameTypePlugin
