"""GroupRational as a TensorRT IPluginV3 Python plugin (namespace "mlpdeploy", version "1").

The ONNX parser maps a `GroupRational` node that carries `plugin_namespace="mlpdeploy"` to this
plugin and hands it the node's `form` attribute as a CHAR field. Inputs arrive in the node's
order: x [..., C], numerator [1|G, m+1], denominator [G, n]; the output has x's shape and type.
`enqueue` wraps TensorRT's device pointers as torch tensors on TensorRT's stream and launches
the Triton kernel straight into the output (no workspace). The rules are plain functions
below, tested without TensorRT; `make_creator(trt)` binds the classes to a module.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from mlpdeploy.errors import OpError

from .. import trt_plugin_base
from .reference import FORMS, check_shapes

PLUGIN_NAME = "GroupRational"
FIELD_TYPES = {"form": "CHAR"}
supports_combination = trt_plugin_base.one_float_type  # x FLOAT/HALF/BF16, everything else x's type, LINEAR


# ---- rules, without TensorRT ------------------------------------------------------------


def decode_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Plugin fields (as TensorRT hands them) → constructor kwargs; the form is checked (default A)."""
    form = trt_plugin_base.decode_string(fields["form"]) if "form" in fields else "A"
    if form not in FORMS:
        raise OpError(f"unknown GroupRational form {form!r}; forms are {', '.join(FORMS)}")
    return {"form": form}


def check_dims(x_dims: Sequence[int], numerator_dims: Sequence[int], denominator_dims: Sequence[int], form: str) -> tuple[int, int, int]:
    """(groups, m, n) at enqueue time, or a one-line OpError (shapes are the op's, see reference.py)."""
    return check_shapes(tuple(int(d) for d in x_dims), tuple(numerator_dims), tuple(denominator_dims), form)


def run(x, numerator, denominator, form: str, out) -> None:
    """The plugin's computation on torch tensors: the Triton kernel writes P/Q into `out`."""
    from .kernel import group_rational_triton

    group_rational_triton(x, numerator, denominator, form, out=out)


# ---- TensorRT classes -------------------------------------------------------------------


@functools.cache
def plugin_class(trt) -> type:
    """The GroupRational IPluginV3 class bound to TensorRT module `trt`."""

    class GroupRationalPlugin(trt_plugin_base.same_type_plugin_base(trt)):
        PLUGIN_NAME = PLUGIN_NAME

        def __init__(self, form: str = "A", phase=None):
            super().__init__(phase)
            self.form = decode_fields({"form": form})["form"]

        def fields(self):
            return {"form": self.form}

        def get_output_shapes(self, inputs, shape_inputs, expr_builder):
            return [trt.DimsExprs(inputs[0])]

        def compute(self, dims, tensors, out):
            check_dims(*dims, self.form)
            run(*tensors, self.form, out)

    return GroupRationalPlugin


def make_creator(trt=None):
    """An IPluginCreatorV3One instance for GroupRational (register it with trt_register.register_plugins)."""
    trt = trt or trt_plugin_base.import_tensorrt()
    return trt_plugin_base.creator_class(trt, plugin_class(trt), FIELD_TYPES, decode_fields)()
