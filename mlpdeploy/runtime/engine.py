"""`Engine`: a built artifact loaded to run, its inputs checked against its manifest.

`Engine.load(path)` takes an artifact file (`model.ort.onnx`, an exported or rewritten `.onnx`, a
TensorRT or TensorRT-RTX engine) or a `compile` output directory (it picks the built model from
`report.json`), and runs it through the runner of the backend its manifest names (the registry in
`mlpdeploy.backends`; an ONNX model no backend built runs in `onnxruntime`), never by file suffix.
ONNX Runtime runs an ONNX model with the session settings saved beside it at build time; an engine
needs its TensorRT runtime installed and a GPU, else one line naming what is missing.

`engine(**inputs) -> {output: array}` checks every call against the manifest (names, dtypes,
ranks, fixed sizes, dynamic-dim ranges) and is safe to call from many threads at once: ONNX
Runtime's `InferenceSession.run` is thread-safe and the engine keeps no per-call state; a
TensorRT engine hands each concurrent caller its own execution context and buffers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlpdeploy.backends import backend_of, get_backend
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.inputs import cast_to_specs, check_inputs
from mlpdeploy.model.kv_cache import CacheLayout
from mlpdeploy.model.manifest import Manifest, find_manifest

# Session entries for an engine that shares the cores with other work between its runs (a server's
# event loop, a drafter's session): ONNX Runtime's threads spin while a run lasts and stop when it
# returns. Measured on SmolLM2-135M int4, 2 cores: a target and a drafter session stepping in turn
# took 21.9 ms a pair with both spinning, 12.7 ms with this; one session alone steps 12% slower with
# it than spinning, so plain generation in a process of its own keeps the build's settings.
IDLE_BETWEEN_RUNS = {"session.force_spinning_stop": "1"}


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
    return path


class Engine:
    """A loaded artifact: `engine(**inputs) -> {output: array}` through its backend's runner (active while
    the engine lives; `close()` or a `with` block releases it). `session` is the ONNX Runtime session
    (for IO binding, e.g. the cached generator) when ONNX Runtime runs it, else None."""

    def __init__(self, path: Path, manifest: Manifest, runner, backend: str):
        self.path, self.manifest, self.runner, self.backend = path, manifest, runner, backend
        if not runner.is_active:
            runner.activate()
        self.session = getattr(runner, "session", None)
        self.input_names, self.output_names = list(runner.input_names), list(runner.output_names)
        self.runtime: str = runner.runtime

    @classmethod
    def load(cls, path: Path | str, threads: int | None = None, session_entries: dict[str, str] | None = None) -> "Engine":
        """`session_entries`: ONNX Runtime session config entries added to the build's (ignored by other runtimes)."""
        model = resolve_artifact(path)
        manifest = find_manifest(model)
        if manifest is None:
            raise MlpdeployError(f"no manifest beside {model}; the runtime needs the one `mlpdeploy build` writes")
        backend = backend_of(manifest)
        if session_entries and backend == "onnxruntime":
            from mlpdeploy.backends.onnxruntime.loader import SessionFromArtifact
            from mlpdeploy.backends.onnxruntime.runner import OrtRunner

            return cls(model, manifest, OrtRunner(SessionFromArtifact(model, threads=threads, config_entries=session_entries)), backend)
        return cls(model, manifest, get_backend(backend).runner(model, threads=threads), backend)

    @property
    def cache(self) -> CacheLayout | None:
        return CacheLayout.from_json(self.manifest.cache) if self.manifest.cache else None

    def check(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`inputs` checked against the manifest (one-line MlpdeployError) and cast to its dtypes."""
        check_inputs(inputs, self.manifest.inputs, self.manifest.dims, str(self.path.name))
        return cast_to_specs(inputs, self.manifest.inputs)

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        inputs = {k: np.asarray(v) for k, v in inputs.items()}
        return dict(self.runner.infer(self.check(inputs), check_inputs=False))

    def close(self) -> None:
        """Release the runner (its session or engine); the Engine cannot run afterwards."""
        if self.runner.is_active:
            self.runner.deactivate()
            self.session = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: modules may be gone already
            pass
