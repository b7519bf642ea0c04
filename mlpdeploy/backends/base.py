"""The contract every build backend follows (one backend per file, registered in __init__)."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from mlpdeploy.backends.candidate import Candidate
from mlpdeploy.backends.onnxruntime.session import DEFAULT_OPT_LEVEL


@dataclass
class BuildOptions:
    """Options shared by backends; a backend ignores what does not apply to it and says so in its info."""

    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"
    target: str | None = None  # e.g. sm89 for TensorRT-RTX
    shapes: dict[str, tuple[list[int], list[int], list[int]]] = field(default_factory=dict)
    opt_level: str = DEFAULT_OPT_LEVEL  # onnxruntime: graph optimization level
    ort_fusions: bool = True  # onnxruntime: fused ORT contrib ops (pass ort-decoder for a --kv-cache decoder, else ort-fusions)
    ort_kernels: bool = False  # onnxruntime: register mlpdeploy's compiled CPU kernels (built with the system C compiler)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildResult:
    """Artifacts a backend wrote, what it did, and the candidate validation runs."""

    backend: str
    artifacts: dict[str, Path]
    info: dict[str, Any]
    candidate: Candidate

    def to_json(self) -> dict:
        return {
            "backend": self.backend,
            "artifacts": {k: str(v) for k, v in self.artifacts.items()},
            "info": self.info,
            "executed": self.candidate.executed,
            "note": self.candidate.note,
        }


class Backend(abc.ABC):
    """Builds a deployable artifact from an ONNX model, and says how to run what it built."""

    name: ClassVar[str]
    description: ClassVar[str]
    extra: ClassVar[str | None] = None  # pip extra that provides its runtime
    suffix: ClassVar[str]  # default artifact suffix, e.g. ".ort.onnx"
    pass_target: ClassVar[str] = "ort"  # what a pass option `target=auto` becomes for this backend (ort | trt)
    refused_weight_formats: ClassVar[tuple[str, ...]] = ()  # quantize-weights formats it cannot build (planners skip them)

    @abc.abstractmethod
    def build(self, model_path: Path, output: Path, options: BuildOptions) -> BuildResult:
        """Write the artifact to `output` (atomically: nothing is left behind on failure)."""

    @abc.abstractmethod
    def load_candidate(self, artifact: Path) -> Candidate:
        """The candidate for an artifact this backend built earlier (found through its manifest)."""
