"""A candidate: a built artifact as validation runs it.

A backend's build returns one (and `Backend.load_candidate` makes one for an artifact on
disk), so the output, per-layer and task comparisons all run the same thing the same way:
a Polygraphy runner made by `make_runner` (the backend's own runner, as `runtime.Engine` runs it,
or for an engine this machine cannot run, ONNX Runtime's runner on the graph it was parsed from),
on inputs that fit `manifest`. `executed` says in
words what actually runs; `note` says why, when that is not the artifact itself (an engine
this machine cannot run, validated through the ONNX graph it was built from).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlpdeploy.model.manifest import Manifest


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
