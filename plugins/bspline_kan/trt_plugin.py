"""BSplineKAN as a TensorRT IPluginV3 Python plugin (namespace "mlpdeploy", version "1").

The ONNX parser maps a `BSplineKAN` node that carries `plugin_namespace="mlpdeploy"` to this
plugin; it has no fields (the spline order follows from the input shapes). Inputs arrive in
the node's order: x [..., I], grid [I, G+2K+1], W_base [I, O], W_spline [I·(G+K), O]; the
output is [..., O] in x's type. `enqueue` launches the fused Triton kernel on TensorRT's
pointers and stream. The rules are plain functions below, tested without TensorRT.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from .. import trt_plugin_base
from .reference import check_shapes

PLUGIN_NAME = "BSplineKAN"
FIELD_TYPES: dict[str, str] = {}
supports_combination = trt_plugin_base.one_float_type  # x FLOAT/HALF/BF16, everything else x\'s type, LINEAR


def decode_fields(fields: dict[str, Any]) -> dict:
    """BSplineKAN has no plugin fields."""
    return {}


def output_dims(x_dims: Sequence, base_weight_dims: Sequence) -> list:
    """x's dims with the last replaced by O (works on ints or dim expressions)."""
    return [*list(x_dims)[:-1], base_weight_dims[1]]


def run(x, grid, base_weight, spline_weight, out) -> None:
    """The plugin's computation on torch tensors: the fused kernel writes Y into `out`."""
    from .kernel import bspline_kan_triton

    bspline_kan_triton(x, grid, base_weight, spline_weight, out=out)


@functools.cache
def plugin_class(trt) -> type:
    """The BSplineKAN IPluginV3 class bound to TensorRT module `trt`."""

    class BSplineKANPlugin(trt_plugin_base.same_type_plugin_base(trt)):
        PLUGIN_NAME = PLUGIN_NAME

        def fields(self):
            return {}

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            dims = trt.DimsExprs(inputs[0])
            dims[len(dims) - 1] = output_dims(list(inputs[0]), list(inputs[2]))[-1]
            return [dims]

        def compute(self, dims, tensors, out):
            check_shapes(*dims)
            run(*tensors, out)

    return BSplineKANPlugin


def make_creator(trt=None):
    """An IPluginCreatorV3One instance for BSplineKAN (register it with trt_register.register_plugins)."""
    trt = trt or trt_plugin_base.import_tensorrt()
    return trt_plugin_base.creator_class(trt, plugin_class(trt), FIELD_TYPES, decode_fields)()
