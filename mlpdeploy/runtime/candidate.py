"""A candidate: a built artifact as validation runs it.

A backend's build returns one (and `Backend.load_candidate` makes one for an artifact on
disk), so the output, per-layer and task comparisons all run the same thing the same way:
a Polygraphy runner made by `make_runner`, on inputs that fit `manifest`. `executed` says in
words what actually runs; `note` says why, when that is not the artifact itself (an engine
this machine cannot run, validated through the ONNX graph it was built from).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from polygraphy.backend.onnxrt import OnnxrtRunner

from mlpdeploy.memory import release_memory
from mlpdeploy.model.manifest import Manifest, find_manifest
from mlpdeploy.onnx_io import load_onnx
from mlpdeploy.runtime.onnxruntime import make_session, saved_session_config


@dataclass
class Candidate:
    artifact: Path
    make_runner: Callable[[str], object]  # runner name -> a fresh Polygraphy runner (BaseRunner)
    manifest: Manifest | None
    executed: str
    note: str | None = None
    # An ONNX graph that carries module scopes, for the per-layer comparison (run in ONNX
    # Runtime with every layer's value marked as an output); None: per-layer is skipped.
    layer_model: Path | None = None


class LazyOnnxrtRunner(OnnxrtRunner):
    """Polygraphy's ONNX Runtime runner given a session *loader*: the session is made when the runner
    activates and dropped when it deactivates, and the memory it freed is handed back to the system
    then (glibc kept 400 MiB of SmolLM2's freed session resident otherwise), so a comparison never
    holds it beside the torch reference."""

    def deactivate_impl(self):
        super().deactivate_impl()
        release_memory()


def onnx_candidate(model_path: Path | str, session: dict | None = None, note: str | None = None, layer_model: Path | None = None) -> Candidate:
    """An ONNX model run in ONNX Runtime with `session` (default: the settings saved beside it)."""
    path = Path(model_path)
    load_onnx(path, load_external_data=False)  # one-line errors for a file ONNX Runtime would refuse deep inside
    config = session if session is not None else saved_session_config(path)
    providers = ", ".join(p.removesuffix("ExecutionProvider") for p in config["providers"])
    return Candidate(
        artifact=path,
        make_runner=lambda name: LazyOnnxrtRunner(functools.partial(make_session, path, config), name=name),
        manifest=find_manifest(path),
        executed=f"ONNX Runtime ({providers}) on {path.name}",
        note=note,
        layer_model=layer_model if layer_model is not None else path,
    )
