"""Stage 4, build: backends, registered here one line each ("name": "module:Class").

Public API:
    get_backend(name) -> Backend      available_backends()
    Backend.build(model, output, BuildOptions) -> BuildResult (artifacts, info, candidate)
    load_candidate(artifact) -> Candidate: any artifact mlpdeploy built (or any .onnx), as validation runs it
"""

from __future__ import annotations

from pathlib import Path

from mlpdeploy.backends.base import Backend, BuildOptions, BuildResult  # noqa: F401
from mlpdeploy.backends.candidate import Candidate, onnx_candidate  # noqa: F401
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.manifest import find_manifest
from mlpdeploy.registry import Registry

BACKENDS = Registry("backend", "backends", "mlpdeploy.backends", {
    "onnxruntime": "onnxruntime.backend:OnnxRuntimeBackend",
    "tensorrt-rtx": "tensorrt.rtx:TensorRTRTXBackend",
    "tensorrt": "tensorrt.datacenter:TensorRTBackend",
})


def available_backends() -> list[str]:
    return BACKENDS.names()


def get_backend(name: str) -> Backend:
    """An instance of the backend registered as `name`, or a one-line error listing them."""
    return BACKENDS.load(name)()


def built_by(artifact: Path | str) -> str | None:
    """The backend that built `artifact`, from the last build stage in its manifest (None if unknown)."""
    manifest = find_manifest(artifact)
    return manifest.last("build").get("backend") if manifest else None


def load_candidate(artifact: Path | str) -> Candidate:
    """`artifact` as validation runs it: through the backend that built it, or in ONNX Runtime for an .onnx."""
    path = Path(artifact)
    if not path.exists():
        raise MlpdeployError(f"candidate {path} does not exist; pass an .onnx model or an artifact built by `mlpdeploy build`")
    backend = built_by(path)
    if backend is None:
        if path.name.endswith(".onnx"):
            backend = "onnxruntime"
        else:
            raise MlpdeployError(
                f"{path} has no manifest saying which backend built it; pass an .onnx model, or an engine built by "
                "`mlpdeploy build` with its .manifest.json beside it"
            )
    return get_backend(backend).load_candidate(path)
