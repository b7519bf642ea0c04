"""The contract every build backend follows (one backend per file, registered in __init__)."""

from __future__ import annotations

import abc

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class BuildOptions:
    """Options shared by backends; a backend ignores what does not apply to it and says so in its info."""

    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"
    target: str | None = None  # e.g. sm89 for TensorRT-RTX
    shapes: dict[str, tuple[list[int], list[int], list[int]]] = field(default_factory=dict)
    opt_level: str = "extended"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildResult:
    """Artifacts a backend wrote, what it did, and which ONNX graph validation can run."""

    backend: str
    artifacts: dict[str, Path]
    info: dict[str, Any]
    # The ONNX graph validation runs when the engine itself cannot run on this machine,
    # and the session options to run it with.
    validation_model: Path
    validation_note: str | None = None

    def to_json(self) -> dict:
        return {
            "backend": self.backend,
            "artifacts": {k: str(v) for k, v in self.artifacts.items()},
            "info": self.info,
            "validation_model": str(self.validation_model),
            "validation_note": self.validation_note,
        }


class Backend(abc.ABC):
    """Builds a deployable artifact from an ONNX model."""

    name: ClassVar[str]
    description: ClassVar[str]
    extra: ClassVar[str | None] = None  # pip extra that provides its runtime
    suffix: ClassVar[str]  # default artifact suffix, e.g. ".ort.onnx"

    @abc.abstractmethod
    def build(self, model_path: Path, output: Path, options: BuildOptions) -> BuildResult:
        """Write the artifact to `output` (atomically: nothing is left behind on failure)."""

    def engine_runner(self, result: BuildResult):
        """A Polygraphy runner for the built engine when this machine can run it, else None
        (validation then runs `result.validation_model` in ONNX Runtime)."""
        return None
