"""One runner per backend, used everywhere: a backend whose runner is not ONNX Runtime drives the output,
per-layer and task comparisons of `compile`, `validate --candidate` (found through its manifest) and
`runtime.Engine` (found through the registry by the manifest's backend, whatever the file is called)."""

from __future__ import annotations

import shutil
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner
from polygraphy.backend.base import BaseRunner

from mlpdeploy.backends import BACKENDS, Backend, BuildOptions, BuildResult
from mlpdeploy.compile import CompileOptions, compile_model
from mlpdeploy.model import find_manifest


class ReferenceRunner(BaseRunner):
    """Runs an ONNX model with onnx.reference (pure Python, not ONNX Runtime) and counts its calls."""

    calls = 0
    runtime = "onnx.reference"

    def __init__(self, path: Path, name: str | None = None):
        super().__init__(name=name, prefix="onnx-reference")
        self.path = path

    def activate_impl(self):
        from onnx.reference import ReferenceEvaluator

        self.evaluator = ReferenceEvaluator(onnx.load(str(self.path)))
        self.input_names = [v.name for v in self.evaluator.proto_.graph.input]
        self.output_names = [v.name for v in self.evaluator.proto_.graph.output]

    def get_input_metadata_impl(self):
        from onnx.helper import tensor_dtype_to_np_dtype
        from polygraphy.common import TensorMetadata

        meta = TensorMetadata()
        for value in self.evaluator.proto_.graph.input:
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
            meta.add(value.name, dtype=tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type), shape=dims)
        return meta

    def infer_impl(self, feed_dict):
        type(self).calls += 1
        start = time.perf_counter()
        outputs = self.evaluator.run(None, dict(feed_dict))
        self.inference_time = time.perf_counter() - start
        return OrderedDict(zip(self.output_names, (np.asarray(o) for o in outputs)))

    def deactivate_impl(self):
        del self.evaluator, self.input_names, self.output_names


class ReferenceBackend(Backend):
    """Copies the model; its artifact runs in onnx.reference (its candidate is the default: its runner)."""

    name = "onnx-reference"
    description = "test backend: runs models in onnx.reference"
    suffix = ".ref.onnx"

    def build(self, model_path: Path, output: Path, options: BuildOptions | None = None) -> BuildResult:
        shutil.copy(model_path, output)
        manifest = find_manifest(model_path)
        manifest.derived("build", backend=self.name).save_beside(output)
        return BuildResult(self.name, {"model": output}, {"seconds": 0.0}, candidate=self.load_candidate(output))

    def runner(self, artifact: Path, name: str | None = None, threads: int | None = None) -> ReferenceRunner:
        return ReferenceRunner(Path(artifact), name)


def test_compile_runs_every_comparison_through_the_backends_runner(tmp_path, monkeypatch):
    monkeypatch.setitem(BACKENDS.entries, "onnx-reference", ReferenceBackend)
    ReferenceRunner.calls = 0
    options = CompileOptions(backend="onnx-reference", task_limit=32)
    report = compile_model("vit-small", tmp_path / "out", options)
    validation = report["validation"]
    assert report["passed"] and validation["executed"] == "onnx-reference on model.ref.onnx"
    assert validation["task"]["executed"] == validation["executed"] and validation["task"]["samples"] == 32
    assert validation["task"]["agreement"] == 1.0
    # one call for the output comparison, then the 32 task samples in batches of 16
    assert ReferenceRunner.calls == 1 + 2
    assert validation["layers"]["errors"], "per-layer comparison ran on the scoped graph"
    assert report["stages"]["build"]["executed"] == validation["executed"]


def test_validate_cli_finds_the_backend_through_the_manifest(tmp_path, monkeypatch, tiny_spec, tiny_export):
    from mlpdeploy.cli import cli

    monkeypatch.setitem(BACKENDS.entries, "onnx-reference", ReferenceBackend)
    built = ReferenceBackend().build(tiny_export.model_path, tmp_path / "m.ref.onnx", BuildOptions())
    ReferenceRunner.calls = 0
    result = CliRunner().invoke(cli, ["validate", "--reference", tiny_spec, "--candidate", str(built.artifacts["model"])])
    assert result.exit_code == 0, result.output
    assert "ran: onnx-reference on m.ref.onnx" in result.output and ReferenceRunner.calls == 1


def test_engine_loads_through_the_registry_by_the_manifests_backend(tmp_path, monkeypatch, tiny_export):
    """Not by file suffix: an artifact named like an ONNX Runtime build still runs in its own backend's runner."""
    from mlpdeploy.backends import get_backend
    from mlpdeploy.model import generate_inputs
    from mlpdeploy.runtime.engine import Engine

    monkeypatch.setitem(BACKENDS.entries, "onnx-reference", ReferenceBackend)
    built = ReferenceBackend().build(tiny_export.model_path, tmp_path / "m.ort.onnx", BuildOptions())
    feed = generate_inputs(tiny_export.manifest.inputs, dims={"batch": 2, "seq": 3})
    ReferenceRunner.calls = 0
    with Engine.load(built.artifacts["model"]) as engine:
        assert engine.backend == "onnx-reference" and engine.runtime == "onnx.reference" and engine.session is None
        outputs = engine(**feed)
        assert ReferenceRunner.calls == 1 and engine.runner.is_active
    assert not engine.runner.is_active  # released on leaving the block
    with Engine.load(tiny_export.model_path) as plain:  # an export: no build stage, so ONNX Runtime's runner
        assert plain.backend == "onnxruntime" and plain.session is not None
        np.testing.assert_allclose(plain(**feed)["output"], outputs["output"], rtol=1e-5, atol=1e-5)
    ort = get_backend("onnxruntime").runner(tiny_export.model_path)
    with ort:  # the same runner class Engine used, as Polygraphy runners are used
        assert ort.infer(feed)["output"].shape == outputs["output"].shape
