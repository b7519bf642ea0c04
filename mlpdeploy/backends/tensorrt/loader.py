"""Loading a serialized TensorRT or TensorRT-RTX engine to run it (Polygraphy's style: a lazy loader,
and an eager function).

The engine's backend names the runtime (`tensorrt` → the `tensorrt` module, extra `tensorrt`;
`tensorrt-rtx` → `tensorrt_rtx_bindings`, extra `rtx`); both share the API used here (Runtime,
deserialize_cuda_engine). Device memory comes from torch's CUDA allocator, so a CUDA GPU torch sees
is required; each is a one-line error naming what is missing.
"""

from __future__ import annotations

from pathlib import Path

from polygraphy.backend.base import BaseLoader

from mlpdeploy.errors import MlpdeployError, first_line, require

MODULES = {"tensorrt": ("tensorrt", "tensorrt"), "tensorrt-rtx": ("tensorrt_rtx_bindings", "rtx")}


def import_runtime(backend: str):
    """The TensorRT module for engines built by `backend`, or a one-line error naming the extra."""
    if backend not in MODULES:
        raise MlpdeployError(f"the engine's manifest names backend {backend!r}; expected one of {', '.join(MODULES)}")
    module, extra = MODULES[backend]
    return require(module, extra, f"running {backend} engines")


def require_cuda():
    import torch

    if not torch.cuda.is_available():
        raise MlpdeployError("running a TensorRT engine needs a CUDA GPU, and torch sees none here; serve the .onnx build instead")
    return torch


class EngineFromArtifact(BaseLoader):
    """(TensorRT module, deserialized ICudaEngine) for an engine file built by `backend`; for `tensorrt`,
    the mlpdeploy plugins (and `plugin_libraries`) are registered first, since its layers may need them."""

    def __init__(self, path: Path | str, backend: str, plugin_libraries: list[str] | None = None):
        self.path, self.backend, self.plugin_libraries = Path(path), backend, plugin_libraries

    def call_impl(self):
        from mlpdeploy.backends.tensorrt.log import logger_for

        trt = import_runtime(self.backend)
        require_cuda()
        if self.backend == "tensorrt":
            from mlpdeploy.backends.tensorrt.plugins import register_plugins

            register_plugins(trt, self.plugin_libraries)
        if not self.path.is_file():
            raise MlpdeployError(f"engine {self.path} does not exist; build it with `mlpdeploy build MODEL.onnx --backend {self.backend}`")
        runtime = trt.Runtime(logger_for(trt))
        try:
            engine = runtime.deserialize_cuda_engine(self.path.read_bytes())
        except Exception as exc:
            raise MlpdeployError(f"{self.backend} cannot load {self.path}: {first_line(exc)}") from None
        if engine is None:
            raise MlpdeployError(f"{self.backend} cannot load {self.path}: built for another GPU or TensorRT version? rebuild it here")
        return trt, engine


def engine_from_artifact(path: Path | str, backend: str, plugin_libraries: list[str] | None = None):
    """Eager `EngineFromArtifact`."""
    return EngineFromArtifact(path, backend, plugin_libraries)()
