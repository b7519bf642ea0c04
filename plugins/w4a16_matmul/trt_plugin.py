"""W4A16MatMul as a TensorRT IPluginV3 Python plugin (namespace "mlpdeploy", version "1").

The ONNX parser maps a `W4A16MatMul` node that carries `plugin_namespace="mlpdeploy"` to this
plugin and hands it the node's `format` (CHAR), `K` and `block_size` (INT32) fields. Inputs
arrive in the node's order: x [..., K] (FLOAT/HALF/BF16), packed [N, KB, block/2] UINT8,
scales [N, KB] (UINT8 codes for nvfp4/mxfp4, FLOAT for int4/int4asym), then the global scale
FLOAT [1] (nvfp4) or the zero points UINT8 [N, KB] (int4asym). The output is [..., N] in x's
type. `enqueue` launches the Triton kernel on TensorRT's pointers and stream. This is
mlpdeploy's route for MXFP4 into TensorRT (its ONNX parser reads E8M0 only for MXFP8) and for
FP4 weights on GPUs without FP4 math. The rules are plain functions below, tested without TensorRT.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from mlpdeploy.errors import OpError

from .. import trt_plugin_base
from .reference import EXTRA_INPUT, FORMATS, check_format

PLUGIN_NAME = "W4A16MatMul"
FIELD_TYPES = {"format": "CHAR", "K": "INT32", "block_size": "INT32"}
X_TYPES = ("FLOAT", "HALF", "BF16")
SCALE_TYPE = {"nvfp4": "UINT8", "mxfp4": "UINT8", "int4": "FLOAT", "int4asym": "FLOAT"}
EXTRA_TYPE = {"nvfp4": "FLOAT", "int4asym": "UINT8"}

__all__ = ["PLUGIN_NAME", "decode_fields", "input_types", "make_creator", "plugin_class", "supports_combination"]


def _int(value: Any) -> int:
    import numpy as np

    return int(np.asarray(value).reshape(-1)[0])


def decode_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Plugin fields → constructor kwargs (format, K, block_size), checked."""
    missing = [f for f in FIELD_TYPES if f not in fields]
    if missing:
        raise OpError(f"W4A16MatMul plugin needs the fields {', '.join(FIELD_TYPES)}; missing {', '.join(missing)}")
    fmt = trt_plugin_base.decode_string(fields["format"])
    if fmt not in FORMATS:
        raise OpError(f"unknown W4A16MatMul format {fmt!r}; formats are {', '.join(FORMATS)}")
    block = _int(fields["block_size"])
    check_format(fmt, block)
    return {"fmt": fmt, "k": _int(fields["K"]), "block_size": block}


def input_types(fmt: str) -> list[str]:
    """TensorRT type names of inputs 1.. (packed, scales, extra) for `fmt`."""
    return ["UINT8", SCALE_TYPE[fmt]] + ([EXTRA_TYPE[fmt]] if fmt in EXTRA_INPUT else [])


def supports_combination(pos: int, types: Sequence[str], linear: Sequence[bool], fmt: str) -> bool:
    """Every tensor LINEAR; x FLOAT/HALF/BF16; packed UINT8; scales/extra by format; output x's type."""
    if not linear[pos]:
        return False
    others = input_types(fmt)
    if pos == 0:
        return types[0] in X_TYPES
    if pos <= len(others):
        return types[pos] == others[pos - 1]
    return types[pos] == types[0]


def run(x, packed, scales, extra, fmt: str, out) -> None:
    from .kernel import w4a16_matmul_triton

    w4a16_matmul_triton(x, packed, scales, extra, fmt, out=out)


@functools.cache
def plugin_class(trt) -> type:
    """The W4A16MatMul IPluginV3 class bound to TensorRT module `trt`."""

    class W4A16MatMulPlugin(trt_plugin_base.plugin_base(trt)):
        PLUGIN_NAME = PLUGIN_NAME

        def __init__(self, fmt: str = "int4", k: int = 0, block_size: int = 32, phase=None):
            super().__init__(phase)
            check_format(fmt, block_size)
            self.fmt, self.k, self.block_size = fmt, k, block_size

        def fields(self):
            return {"format": self.fmt, "K": self.k, "block_size": self.block_size}

        def clone(self):
            return type(self)(self.fmt, self.k, self.block_size, phase=self.phase)

        def get_output_data_types(self, input_types):
            return [input_types[0]]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            dims = trt.DimsExprs(inputs[0])
            dims[len(dims) - 1] = inputs[1][0]
            return [dims]

        def supports_format_combination(self, pos, in_out, num_inputs):
            return trt_plugin_base.format_answer(trt, pos, in_out, lambda p, t, lin: supports_combination(p, t, lin, self.fmt))

        def get_workspace_size(self, inputs, outputs):
            return 0

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            x_type = trt_plugin_base.TORCH_DTYPES[trt_plugin_base.dtype_name(input_desc[0].type)]
            types = [x_type] + ["uint8" if t == "UINT8" else "float32" for t in input_types(self.fmt)]
            tensors = [trt_plugin_base.device_tensor(p, tuple(d.dims), t) for p, d, t in zip(inputs, input_desc, types)]
            out = trt_plugin_base.device_tensor(outputs[0], tuple(output_desc[0].dims), x_type)
            with trt_plugin_base.on_stream(stream):
                run(tensors[0], tensors[1], tensors[2], tensors[3] if len(tensors) > 3 else None, self.fmt, out)
            return 0

    return W4A16MatMulPlugin


def make_creator(trt=None):
    """An IPluginCreatorV3One instance for W4A16MatMul (register it with trt_register.register_plugins)."""
    trt = trt or trt_plugin_base.import_tensorrt()
    return trt_plugin_base.creator_class(trt, plugin_class(trt), FIELD_TYPES, decode_fields)()
