"""SparseMLP as a TensorRT IPluginV3 Python plugin (namespace "mlpdeploy", version "1").

The ONNX parser maps a `SparseMLP` node that carries `plugin_namespace="mlpdeploy"` to this plugin
and hands it the node's `mode` and `activation` attributes as CHAR fields. Inputs arrive in the
node's order (onnx_function.INPUT_NAMES); the output is x's shape with the last dim W_downᵀ's last,
in x's type. Every float tensor takes x's type; topk mode's `k` is INT64. `enqueue` runs
`kernel.sparse_mlp_triton` on TensorRT's pointers and stream (the selection and the union's
scratch are torch allocations on that stream: the union's size is only known at run time).
The rules are plain functions below, tested without TensorRT.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from mlpdeploy.errors import OpError

from .. import trt_plugin_base
from .reference import ACTIVATIONS, MODES

PLUGIN_NAME = "SparseMLP"
FIELD_TYPES = {"mode": "CHAR", "activation": "CHAR"}
K_POSITION = 7  # topk mode's int64 k

__all__ = ["PLUGIN_NAME", "decode_fields", "make_creator", "output_dims", "plugin_class", "supports_combination"]


def decode_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Plugin fields → constructor kwargs (defaults: topk, relu), both checked."""
    mode = trt_plugin_base.decode_string(fields["mode"]) if "mode" in fields else "topk"
    activation = trt_plugin_base.decode_string(fields["activation"]) if "activation" in fields else "relu"
    if mode not in MODES:
        raise OpError(f"unknown SparseMLP mode {mode!r}; available are {', '.join(MODES)}")
    if activation not in ACTIVATIONS:
        raise OpError(f"unknown SparseMLP activation {activation!r}; available are {', '.join(ACTIVATIONS)}")
    return {"mode": mode, "activation": activation}


def w_down_position(mode: str) -> int:
    return 3 if mode == "topk" else 5


def output_dims(x_dims: Sequence, w_down_t_dims: Sequence) -> list:
    """x's dims with the last replaced by W_downᵀ's last."""
    if len(w_down_t_dims) != 2:
        raise OpError(f"SparseMLP W_downᵀ must be 2-D [h, d_out], got {len(w_down_t_dims)} dims")
    return [*list(x_dims)[:-1], w_down_t_dims[1]]


def supports_combination(mode: str):
    """The format rule of a mode: LINEAR everywhere; topk's k INT64; every other tensor x's float type."""
    def rule(pos: int, types: Sequence[str], linear: Sequence[bool]) -> bool:
        if mode == "topk" and pos == K_POSITION:
            return linear[pos] and types[pos] == "INT64"
        return trt_plugin_base.one_float_type(pos, types, linear)
    return rule


@functools.cache
def plugin_class(trt) -> type:
    """The SparseMLP IPluginV3 class bound to TensorRT module `trt`."""

    class SparseMLPPlugin(trt_plugin_base.plugin_base(trt)):
        PLUGIN_NAME = PLUGIN_NAME

        def __init__(self, mode: str = "topk", activation: str = "relu", phase=None):
            super().__init__(phase)
            decoded = decode_fields({"mode": mode, "activation": activation})
            self.mode, self.activation = decoded["mode"], decoded["activation"]

        def fields(self):
            return {"mode": self.mode, "activation": self.activation}

        def get_output_data_types(self, input_types):
            return [input_types[0]]

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            dims = trt.DimsExprs(inputs[0])
            dims[len(dims) - 1] = output_dims(list(inputs[0]), list(inputs[w_down_position(self.mode)]))[-1]
            return [dims]

        def supports_format_combination(self, pos, in_out, num_inputs):
            return trt_plugin_base.format_answer(trt, pos, in_out, supports_combination(self.mode))

        def get_workspace_size(self, inputs, outputs):
            return 0

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            from .kernel import sparse_mlp_triton

            dtype = trt_plugin_base.TORCH_DTYPES[trt_plugin_base.dtype_name(input_desc[0].type)]
            dims = [tuple(d.dims) for d in input_desc]
            tensors = [trt_plugin_base.device_tensor(p, s, "int64" if self.mode == "topk" and i == K_POSITION else dtype)
                       for i, (p, s) in enumerate(zip(inputs, dims))]
            out = trt_plugin_base.device_tensor(outputs[0], tuple(output_desc[0].dims), dtype)
            with trt_plugin_base.on_stream(stream):
                out.copy_(sparse_mlp_triton(*tensors, mode=self.mode, activation=self.activation))
            return 0

    return SparseMLPPlugin


def make_creator(trt=None):
    """An IPluginCreatorV3One instance for SparseMLP (register it with trt_register.register_plugins)."""
    trt = trt or trt_plugin_base.import_tensorrt()
    return trt_plugin_base.creator_class(trt, plugin_class(trt), FIELD_TYPES, decode_fields)()
