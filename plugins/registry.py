"""The registry of mlpdeploy custom ops: one line per op, faces located by convention."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

DOMAIN = "mlpdeploy"
PLUGIN_NAMESPACE = "mlpdeploy"
PLUGIN_VERSION = "1"
# The node attributes that make TensorRT's ONNX parser pick a registered plugin (TensorRT >= 10.7).
PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version")

FACES = ("reference", "onnx_function", "kernel", "trt_plugin")


@dataclass(frozen=True)
class CustomOp:
    """A custom op: its ONNX op_type in domain `mlpdeploy` and its folder under plugins/."""

    op_type: str
    folder: str

    def face(self, name: str):
        """Import one face module (`reference`, `onnx_function`, `kernel`, `trt_plugin`)."""
        if name not in FACES:
            raise KeyError(f"unknown face {name!r}; faces are {', '.join(FACES)}")
        return importlib.import_module(f"mlpdeploy.plugins.{self.folder}.{name}")


OPS: dict[str, CustomOp] = {
    op.op_type: op
    for op in [
        CustomOp("GatedMLP", "gated_mlp"),  # gated MLP: act(x·W_gate)⊙(x·W_up)·W_down (SwiGLU/GeGLU/bilinear)
    ]
}
