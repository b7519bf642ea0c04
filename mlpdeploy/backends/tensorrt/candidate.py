"""Engines as validation runs them: an engine's files on disk, and the graph it was parsed from.

An engine build writes `<engine>.onnx` (the exact graph parsed) and, for bf16 or FP4 weights,
`<engine>.validate.onnx` (bf16 rounding emulated in fp32, FP4 weights decoded) beside the engine; where the engine
cannot run here, validation runs that graph in ONNX Runtime and says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mlpdeploy.backends import Candidate, onnx_candidate
from mlpdeploy.backends.onnxruntime.session import session_config
from mlpdeploy.errors import MlpdeployError


def parsed_graph_path(engine: Path) -> Path:
    """The ONNX graph validation runs for an engine: `<engine>.validate.onnx` (bf16, FP4) or `<engine>.onnx`."""
    emulated = engine.parent / f"{engine.name}.validate.onnx"
    return emulated if emulated.exists() else engine.parent / f"{engine.name}.onnx"


def parsed_graph_candidate(engine: Path, parsed_graph: Path, note: str, layer_model: Path | None = None) -> Candidate:
    """The candidate for an engine this machine cannot run: the graph it was parsed from, in ONNX Runtime on the CPU."""
    candidate = onnx_candidate(parsed_graph, session_config(device="cpu"), note=note, layer_model=layer_model)
    return dataclasses.replace(candidate, artifact=engine)


def check_engine_path(artifact: Path | str, backend: str) -> Path:
    """`artifact` as a Path if it is an engine mlpdeploy built (parsed graph and manifest beside it)."""
    engine = Path(artifact)
    if not engine.is_file():
        raise MlpdeployError(f"engine {engine} does not exist; build it with `mlpdeploy build MODEL.onnx --backend {backend}`")
    if not parsed_graph_path(engine).is_file():
        raise MlpdeployError(
            f"{engine} has no {engine.name}.onnx beside it (the graph it was parsed from); validate engines built by "
            f"`mlpdeploy build --backend {backend}` with their files kept together"
        )
    return engine
