"""The contract every backend follows: build an artifact, and run what it built through one runner (a
Polygraphy `BaseRunner`) that validation, `runtime.Engine`, bench and serving all use. One backend per
package under `mlpdeploy/backends/`, registered in `mlpdeploy/backends/__init__.py`."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mlpdeploy.backends.candidate import Candidate
from mlpdeploy.backends.options import BuildOptions, as_options


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
    """Builds a deployable artifact from an ONNX model, and runs what it built."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[BuildOptions]] = BuildOptions  # its typed options (fields declare their CLI options)
    extra: ClassVar[str | None] = None  # pip extra that provides its runtime
    suffix: ClassVar[str]  # default artifact suffix, e.g. ".ort.onnx"
    pass_target: ClassVar[str] = "ort"  # what a pass option `target=auto` becomes for this backend (ort | trt)
    refused_weight_formats: ClassVar[tuple[str, ...]] = ()  # quantize-weights formats it cannot build (planners skip them)

    def options(self, options: BuildOptions | None = None) -> tuple[BuildOptions, list[str]]:
        """`options` as this backend's `Options`, and what it ignored (fields of another backend's options set)."""
        return as_options(options, self.Options, self.name)

    @abc.abstractmethod
    def build(self, model_path: Path, output: Path, options: BuildOptions | None = None) -> BuildResult:
        """Write the artifact to `output` (atomically: nothing is left behind on failure)."""

    @abc.abstractmethod
    def runner(self, artifact: Path, name: str | None = None, threads: int | None = None):
        """A Polygraphy runner (not yet activated) for an artifact this backend built, run as deployed;
        a one-line MlpdeployError (at activation at the latest) when it cannot run here. Besides the
        BaseRunner API it has `input_names`, `output_names` (once active) and `runtime` (a name)."""

    def load_candidate(self, artifact: Path) -> Candidate:
        """The candidate for an artifact this backend built earlier (validation runs it): by default its runner."""
        from mlpdeploy.model.manifest import find_manifest

        artifact = Path(artifact)
        return Candidate(artifact=artifact, make_runner=lambda name: self.runner(artifact, name=name), manifest=find_manifest(artifact),
                         executed=f"{self.name} on {artifact.name}")
