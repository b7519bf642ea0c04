"""Build backends, registered here one line each ("name": "module:Class")."""

from __future__ import annotations

import importlib

from ..errors import MlpdeployError
from .base import Backend, BuildOptions, BuildResult  # noqa: F401

REGISTRY: dict[str, str] = {
    "onnxruntime": "onnxruntime:OnnxRuntimeBackend",
    "tensorrt-rtx": "tensorrt_rtx:TensorRTRTXBackend",
    "tensorrt": "tensorrt:TensorRTBackend",
}


def available_backends() -> list[str]:
    return sorted(REGISTRY)


def get_backend(name: str) -> Backend:
    """An instance of the backend registered as `name`, or a one-line error listing them."""
    if name not in REGISTRY:
        raise MlpdeployError(f"unknown backend {name!r}; available backends: {', '.join(available_backends())}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"mlpdeploy.backends.{module}"), cls)()
