"""`Engine`: a built artifact loaded to run, its inputs checked against its manifest.

`Engine.load(path)` takes an artifact file (`model.ort.onnx`, any `.onnx`) or a `compile`
output directory (it picks the built model from `report.json`). ONNX Runtime runs it with the
session settings saved beside it at build time.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.inputs import check_inputs
from mlpdeploy.model.kv_cache import CacheLayout
from mlpdeploy.model.manifest import Manifest, find_manifest
from mlpdeploy.runtime.onnxruntime import make_session, saved_session_config


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
    if not path.name.endswith(".onnx"):
        raise MlpdeployError(
            f"{path}: the runtime runs ONNX models in ONNX Runtime; a TensorRT engine needs its TensorRT runtime on a GPU "
            "(not available here) — run the .onnx build instead"
        )
    return path


class Engine:
    """A loaded artifact: `engine(**inputs) -> {output: array}`, and its session for IO binding."""

    def __init__(self, path: Path, manifest: Manifest, session):
        self.path, self.manifest, self.session = path, manifest, session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    @classmethod
    def load(cls, path: Path | str, threads: int | None = None) -> "Engine":
        model = resolve_artifact(path)
        manifest = find_manifest(model)
        if manifest is None:
            raise MlpdeployError(f"no manifest beside {model}; the runtime needs the one `mlpdeploy build` writes")
        config = dict(saved_session_config(model))
        if threads is not None:
            config["intra_op_num_threads"] = threads
        return cls(model, manifest, make_session(model, config))

    @property
    def cache(self) -> CacheLayout | None:
        return CacheLayout.from_json(self.manifest.cache) if self.manifest.cache else None

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        check_inputs(inputs, self.manifest.inputs, self.manifest.dims, str(self.path))
        return dict(zip(self.output_names, self.session.run(None, inputs)))
