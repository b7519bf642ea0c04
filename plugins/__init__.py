"""mlpdeploy's custom ops (installed as `mlpdeploy.plugins`), one folder per op.

Each op folder provides the four faces (docs/ops.md): `reference.py` (torch semantics),
`onnx_function.py` (standard-op body as a model-local function), `kernel.py` (Triton),
`trt_plugin.py` (TensorRT IPluginV3). Ops are registered here, one line each.
"""

from __future__ import annotations

from .registry import OPS, CustomOp  # noqa: F401
