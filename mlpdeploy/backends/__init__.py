"""Stage 4, build and run: backends, one package each, registered here one line each ("name": "module:Class").

Public API:
    get_backend(name) -> Backend      available_backends()      BACKENDS (the registry)
    Backend.build(model, output, options) -> BuildResult (artifacts, info, candidate)
    Backend.Options: its typed options (a BuildOptions subclass)      BuildOptions: what every backend takes
    Backend.runner(artifact, name=None, threads=None) -> its Polygraphy runner (Engine, bench, serving, validation)
    backend_of(artifact) -> the backend that runs it (by its manifest)
    load_candidate(artifact) -> Candidate: any artifact mlpdeploy built (or any .onnx), as validation runs it
    artifact_runner(artifact, name=None): the artifact's runner as validation runs it (`polygraphy run --mlpdeploy`)
"""

from __future__ import annotations

from pathlib import Path

from mlpdeploy.backends.base import Backend, BuildResult  # noqa: F401
from mlpdeploy.backends.candidate import Candidate
from mlpdeploy.backends.options import BuildOptions  # noqa: F401
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.manifest import Manifest, find_manifest
from mlpdeploy.registry import Registry

BACKENDS = Registry("backend", "backends", "mlpdeploy.backends", {
    "onnxruntime": "onnxruntime.backend:OnnxRuntimeBackend",
    "tensorrt-rtx": "tensorrt.rtx:TensorRTRTXBackend",
    "tensorrt": "tensorrt.datacenter:TensorRTBackend",
})
UNBUILT = "onnxruntime"  # runs an ONNX model no backend built (an export or a rewrite)


def available_backends() -> list[str]:
    return BACKENDS.names()


def get_backend(name: str) -> Backend:
    """An instance of the backend registered as `name`, or a one-line error listing them."""
    return BACKENDS.load(name)()


def built_by(artifact: Path | str) -> str | None:
    """The backend that built `artifact`, from the last build stage in its manifest (None if unknown)."""
    manifest = find_manifest(artifact)
    return manifest.last("build").get("backend") if manifest else None


def backend_of(manifest: Manifest) -> str:
    """The backend that runs the model a manifest describes: the one its last build stage names, else
    `onnxruntime` (a manifest with no build stage describes an ONNX model as exported or rewritten)."""
    return manifest.last("build").get("backend") or UNBUILT


def load_candidate(artifact: Path | str) -> Candidate:
    """`artifact` as validation runs it: through the backend that built it, or in ONNX Runtime for an .onnx."""
    path = Path(artifact)
    if not path.exists():
        raise MlpdeployError(f"candidate {path} does not exist; pass an .onnx model or an artifact built by `mlpdeploy build`")
    backend = built_by(path)
    if backend is None:
        if path.name.endswith(".onnx"):  # no manifest: an ONNX file from elsewhere, which only ONNX Runtime can run
            backend = UNBUILT
        else:
            raise MlpdeployError(
                f"{path} has no manifest saying which backend built it; pass an .onnx model, or an engine built by "
                "`mlpdeploy build` with its .manifest.json beside it"
            )
    return get_backend(backend).load_candidate(path)


def onnx_candidate(model_path: Path | str, session: dict | None = None, note: str | None = None, layer_model: Path | None = None) -> Candidate:
    """An ONNX model as validation runs it, in ONNX Runtime (`backends.onnxruntime.runner.onnx_candidate`)."""
    from mlpdeploy.backends.onnxruntime.runner import onnx_candidate as make

    return make(model_path, session, note, layer_model)


def artifact_runner(artifact: Path | str, name: str | None = None):
    """The runner `polygraphy run ARTIFACT --mlpdeploy` uses: what validation runs for `artifact` (its
    backend's runner, or for an engine this machine cannot run, the graph it was parsed from)."""
    candidate = load_candidate(artifact)
    if candidate.note:
        from polygraphy.logger import G_LOGGER

        G_LOGGER.warning(f"mlpdeploy: {candidate.note}")
    backend = built_by(artifact) or UNBUILT
    return candidate.make_runner(name or f"mlpdeploy-{backend}")
