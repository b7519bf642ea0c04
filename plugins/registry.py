"""The registry of mlpdeploy custom ops: one line per op, faces located by convention."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# The node attributes that make TensorRT's ONNX parser pick a registered plugin (TensorRT >= 10.7).
PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version")

FACES = ("reference", "onnx_function", "kernel", "trt_plugin")
# Optional fifth file: torch_op.py, a torch.library custom op that exports as one node (torch_export.py).
TORCH_OP = "torch_op"


@dataclass(frozen=True)
class CustomOp:
    """A custom op: its ONNX op_type in domain `mlpdeploy` and its folder under plugins/."""

    op_type: str
    folder: str
    exportable: bool = False  # has torch_op.py: torch modules can call it and export it as one node

    def face(self, name: str):
        """Import one face module (`reference`, `onnx_function`, `kernel`, `trt_plugin`)."""
        if name not in FACES:
            raise KeyError(f"unknown face {name!r}; faces are {', '.join(FACES)}")
        return importlib.import_module(f"mlpdeploy.plugins.{self.folder}.{name}")

    def torch_op(self):
        """The op's torch_op module (custom op + ONNX translation), or None when it has none."""
        return importlib.import_module(f"mlpdeploy.plugins.{self.folder}.{TORCH_OP}") if self.exportable else None


OPS: dict[str, CustomOp] = {
    op.op_type: op
    for op in [
        CustomOp("GatedMLP", "gated_mlp"),  # gated MLP: act(x·W_gate)⊙(x·W_up)·W_down (SwiGLU/GeGLU/bilinear)
        CustomOp("GroupRational", "group_rational", exportable=True),  # GR-KAN (KAT): group-wise P(x)/Q(x), forms A/B
        CustomOp("BSplineKAN", "bspline_kan", exportable=True),  # efficient-kan: SiLU(x)·W_base + B-spline bases·W_spline
        CustomOp("FANLayer", "fan_layer", exportable=True),  # FAN: concat[cos(x·W_p), sin(x·W_p), act(x·W_g + b)]
        CustomOp("SparseMLP", "sparse_mlp"),  # contextual sparsity: only the predicted (topk) / above-threshold neurons
        CustomOp("W4A16MatMul", "w4a16_matmul"),  # x·W, W as NVFP4/MXFP4/INT4 codes decoded inside the GEMM
    ]
}
