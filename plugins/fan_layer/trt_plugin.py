"""FANLayer as a TensorRT IPluginV3 Python plugin (namespace "mlpdeploy", version "1").

The ONNX parser maps a `FANLayer` node that carries `plugin_namespace="mlpdeploy"` to this
plugin and hands it the node's `activation` attribute as a CHAR field. Inputs arrive in the
node's order: x [..., I], W_p [I, P], W_g [I, D], b_p [P], b_g [D]; the output is
[..., 2P + D] in x's type. `enqueue` launches the Triton kernel on TensorRT's pointers and
stream. The rules are plain functions below, tested without TensorRT.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from mlpdeploy.errors import OpError

from .. import trt_plugin_base
from .reference import ACTIVATIONS, check_shapes

PLUGIN_NAME = "FANLayer"
FIELD_TYPES = {"activation": "CHAR"}
supports_combination = trt_plugin_base.one_float_type  # x FLOAT/HALF/BF16, everything else x\'s type, LINEAR

__all__ = ["PLUGIN_NAME", "decode_fields", "make_creator", "output_width", "plugin_class", "supports_combination"]


def decode_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Plugin fields → constructor kwargs; the activation is checked (default gelu, as FAN's)."""
    activation = trt_plugin_base.decode_string(fields["activation"]) if "activation" in fields else "gelu"
    if activation not in ACTIVATIONS:
        raise OpError(f"unknown FANLayer activation {activation!r}; available are {', '.join(ACTIVATIONS)}")
    return {"activation": activation}


def output_width(w_p_dims: Sequence[int], w_g_dims: Sequence[int]) -> int:
    """2P + D."""
    return 2 * int(w_p_dims[1]) + int(w_g_dims[1])


def run(x, w_p, w_g, b_p, b_g, activation: str, out) -> None:
    from .kernel import fan_layer_triton

    fan_layer_triton(x, w_p, w_g, b_p, b_g, activation, out=out)


@functools.cache
def plugin_class(trt) -> type:
    """The FANLayer IPluginV3 class bound to TensorRT module `trt`."""

    class FANLayerPlugin(trt_plugin_base.same_type_plugin_base(trt)):
        PLUGIN_NAME = PLUGIN_NAME

        def __init__(self, activation: str = "gelu", phase=None):
            super().__init__(phase)
            self.activation = decode_fields({"activation": activation})["activation"]

        def fields(self):
            return {"activation": self.activation}

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            dims = trt.DimsExprs(inputs[0])
            two_p = expr_builder.operation(trt.DimensionOperation.SUM, inputs[1][1], inputs[1][1])
            dims[len(dims) - 1] = expr_builder.operation(trt.DimensionOperation.SUM, two_p, inputs[2][1])
            return [dims]

        def compute(self, dims, tensors, out):
            check_shapes(*dims, self.activation)
            run(*tensors, self.activation, out)

    return FANLayerPlugin


def make_creator(trt=None):
    """An IPluginCreatorV3One instance for FANLayer (register it with trt_register.register_plugins)."""
    trt = trt or trt_plugin_base.import_tensorrt()
    return trt_plugin_base.creator_class(trt, plugin_class(trt), FIELD_TYPES, decode_fields)()
