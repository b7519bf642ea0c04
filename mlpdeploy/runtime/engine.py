"""`Engine`: a built artifact loaded to run, its inputs checked against its manifest.

`Engine.load(path)` takes an artifact file (`model.ort.onnx`, any `.onnx`, a TensorRT or
TensorRT-RTX `.engine` / `.plan`) or a `compile` output directory (it picks the built model from
`report.json`). ONNX Runtime runs an ONNX model with the session settings saved beside it at build
time; an engine runs in the TensorRT runtime its manifest names (`mlpdeploy.backends.tensorrt.runtime`),
which needs that runtime installed and a GPU, else one line naming what is missing.

`engine(**inputs) -> {output: array}` checks every call against the manifest (names, dtypes,
ranks, fixed sizes, dynamic-dim ranges) and is safe to call from many threads at once: ONNX
Runtime's `InferenceSession.run` is thread-safe and the engine keeps no per-call state; a
TensorRT engine hands each concurrent caller its own execution context and buffers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlpdeploy.backends.onnxruntime.session import make_session, saved_session_config
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.inputs import cast_to_specs, check_inputs
from mlpdeploy.model.kv_cache import CacheLayout
from mlpdeploy.model.manifest import Manifest, find_manifest

ENGINE_SUFFIXES = (".engine", ".plan")


def resolve_artifact(path: Path | str) -> Path:
    """The model file `path` names: the file itself, or the built model of a compile directory."""
    path = Path(path)
    if path.is_dir():
        report = path / "report.json"
        if not report.is_file():
            raise MlpdeployError(f"{path} is a directory without report.json; pass a built .onnx or a `mlpdeploy compile` output directory")
        artifacts = json.loads(report.read_text()).get("artifacts", {})
        built = artifacts.get("build_model") or artifacts.get("build_engine")
        if built is None:
            raise MlpdeployError(f"{report} names no built model; re-run `mlpdeploy compile`")
        path = path / Path(built).name
    if not path.is_file():
        raise MlpdeployError(f"artifact {path} does not exist; build one with `mlpdeploy build` or `mlpdeploy compile`")
    if not path.name.endswith((".onnx", *ENGINE_SUFFIXES)):
        raise MlpdeployError(f"{path}: not an artifact the runtime knows; pass a built .onnx, a TensorRT .engine/.plan, or a compile directory")
    return path


def is_engine(path: Path) -> bool:
    return path.name.endswith(ENGINE_SUFFIXES)


class OrtSession:
    """ONNX Runtime behind the engine: `run(feed) -> {name: array}`."""

    runtime = "onnxruntime"

    def __init__(self, session):
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.providers = session.get_providers()

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feed)))


class Engine:
    """A loaded artifact: `engine(**inputs) -> {output: array}`; `session` is the ONNX Runtime
    session (for IO binding, e.g. the cached generator) when ONNX Runtime runs it."""

    def __init__(self, path: Path, manifest: Manifest, runner):
        self.path, self.manifest, self.runner = path, manifest, runner
        self.session = getattr(runner, "session", None)
        self.input_names, self.output_names = list(runner.input_names), list(runner.output_names)
        self.runtime: str = runner.runtime

    @classmethod
    def load(cls, path: Path | str, threads: int | None = None) -> "Engine":
        model = resolve_artifact(path)
        manifest = find_manifest(model)
        if manifest is None:
            raise MlpdeployError(f"no manifest beside {model}; the runtime needs the one `mlpdeploy build` writes")
        if is_engine(model):
            from mlpdeploy.backends.tensorrt.runtime import TensorRTSession

            return cls(model, manifest, TensorRTSession.load(model, manifest.last("build").get("backend", "tensorrt")))
        config = dict(saved_session_config(model))
        if threads is not None:
            config["intra_op_num_threads"] = threads
        return cls(model, manifest, OrtSession(make_session(model, config)))

    @property
    def cache(self) -> CacheLayout | None:
        return CacheLayout.from_json(self.manifest.cache) if self.manifest.cache else None

    def check(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`inputs` checked against the manifest (one-line MlpdeployError) and cast to its dtypes."""
        check_inputs(inputs, self.manifest.inputs, self.manifest.dims, str(self.path.name))
        return cast_to_specs(inputs, self.manifest.inputs)

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        inputs = {k: np.asarray(v) for k, v in inputs.items()}
        return self.runner.run(self.check(inputs))
