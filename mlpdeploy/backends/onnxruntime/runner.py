"""The `onnxruntime` backend's runner: Polygraphy's OnnxrtRunner on a session made with mlpdeploy's
settings (`SessionFromArtifact`), the one runner validation, `runtime.Engine`, bench and serving use
for an ONNX model; and `onnx_candidate`, an ONNX model as validation runs it."""

from __future__ import annotations

from pathlib import Path

from polygraphy.backend.onnxrt import OnnxrtRunner

from mlpdeploy.backends.candidate import Candidate
from mlpdeploy.backends.onnxruntime.loader import SessionFromArtifact
from mlpdeploy.memory import release_memory
from mlpdeploy.model.manifest import find_manifest
from mlpdeploy.onnx_io import load_onnx


class OrtRunner(OnnxrtRunner):
    """OnnxrtRunner with `input_names`, `output_names` and `session` once active (IO binding needs the
    session: the cached generator drives the KV cache through it)."""

    runtime = "onnxruntime"

    def __init__(self, session, name: str | None = None):
        super().__init__(session, name=name)

    @property
    def session(self):
        return self.sess

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.sess.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.sess.get_outputs()]

    def deactivate_impl(self):
        super().deactivate_impl()
        # What the session freed goes back to the system now: glibc kept 400 MiB of SmolLM2's session
        # resident otherwise, beside the torch reference a comparison runs next.
        release_memory()

    def __del__(self):
        # An Engine's runner stays active for the Engine's life and may be collected with it (in a
        # reference cycle, before the Engine's own finalizer): free the session without a leak warning.
        if getattr(self, "is_active", False):
            try:
                self.deactivate()
            except Exception:  # interpreter shutdown
                pass


def ort_runner(model_path: Path | str, name: str | None = None, threads: int | None = None, config: dict | None = None) -> OrtRunner:
    """The runner for an ONNX model, with the settings its build saved (or `config`)."""
    return OrtRunner(SessionFromArtifact(model_path, config=config, threads=threads), name=name)


def onnx_candidate(model_path: Path | str, session: dict | None = None, note: str | None = None, layer_model: Path | None = None) -> Candidate:
    """An ONNX model run in ONNX Runtime with `session` settings (default: the settings saved beside it)."""
    path = Path(model_path)
    load_onnx(path, load_external_data=False)  # one-line errors for a file ONNX Runtime would refuse deep inside
    providers = ", ".join(p.removesuffix("ExecutionProvider") for p in SessionFromArtifact(path, config=session).settings()["providers"])
    return Candidate(
        artifact=path,
        make_runner=lambda name: ort_runner(path, name=name, config=session),
        manifest=find_manifest(path),
        executed=f"ONNX Runtime ({providers}) on {path.name}",
        note=note,
        layer_model=layer_model if layer_model is not None else path,
    )
