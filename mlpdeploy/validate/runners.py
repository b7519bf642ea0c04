"""Runners validation needs that no backend provides: the reference side as a torch module on the CPU,
and a candidate's outputs recorded elsewhere (`polygraphy run ... --save-outputs`), replayed.

(The candidate side otherwise comes from its backend: `mlpdeploy.backends.Candidate.make_runner`.)
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from pathlib import Path

from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from mlpdeploy.backends import Candidate
from mlpdeploy.contract import numpy_dtype
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.memory import release_memory
from mlpdeploy.model.bundle import ModelBundle, set_eval
from mlpdeploy.model.paging import release_weights
from mlpdeploy.model.torch_run import run_module


class TorchRunner(BaseRunner):
    """Runs a torch module on CPU (Polygraphy's PytRunner moves everything to CUDA)."""

    def __init__(self, bundle: ModelBundle, name: str | None = None):
        super().__init__(name=name, prefix="torch-runner")
        self.bundle = bundle
        self.input_names = [s.name for s in bundle.inputs]

    def activate_impl(self):
        set_eval(self.bundle.module)

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for spec in self.bundle.inputs:
            meta.add(spec.name, dtype=numpy_dtype(spec.dtype), shape=[d if isinstance(d, int) else -1 for d in spec.shape])
        return meta

    def infer_impl(self, feed_dict):
        start = time.perf_counter()
        outputs = run_module(self.bundle.module, feed_dict, self.input_names)
        self.inference_time = time.perf_counter() - start
        release_weights(self.bundle.module)  # not resident while another runner (the candidate's session) runs
        return OrderedDict(zip(self.bundle.resolved_output_names(len(outputs)), outputs))

    def deactivate_impl(self):
        release_weights(self.bundle.module)  # memory-mapped weights leave memory until the next run
        release_memory()


class RecordedRunner(BaseRunner):
    """Replays the outputs another runner recorded: the i-th inference returns its i-th iteration's
    outputs (the feeds must be the ones it ran, in order: `polygraphy run --save-inputs`)."""

    def __init__(self, iterations: list[dict], source: str, name: str | None = None, inputs: list | None = None):
        super().__init__(name=name, prefix="recorded-runner")
        self.iterations, self.source, self.inputs = iterations, source, inputs or []

    def activate_impl(self):
        self.position = 0

    def get_input_metadata_impl(self):
        meta = TensorMetadata()  # the artifact's inputs (its manifest), as the recorded run took them
        for spec in self.inputs:
            meta.add(spec.name, dtype=numpy_dtype(spec.dtype), shape=[d if isinstance(d, int) else -1 for d in spec.shape])
        return meta

    def infer_impl(self, feed_dict):
        if self.position >= len(self.iterations):
            raise MlpdeployError(f"{self.source} holds {len(self.iterations)} recorded iteration(s), and validation asked for more; "
                                 "record every feed in one `polygraphy run --save-inputs ... --save-outputs ...`")
        outputs = self.iterations[self.position]
        self.position += 1
        self.inference_time = 0.0
        return OrderedDict(outputs)

    def deactivate_impl(self):
        del self.position


def recorded_candidate(candidate: Candidate, results: Path | str, runner: str | None = None) -> tuple[Candidate, int]:
    """`candidate` with its outputs read from a Polygraphy RunResults JSON (`polygraphy run --save-outputs`)
    instead of run here: those of `runner`, by default the one `--mlpdeploy` ran. Returns the candidate
    and how many iterations were recorded. Its manifest and layer graph stay the artifact's."""
    from polygraphy.comparator import RunResults

    from mlpdeploy.validate.outputs import quiet_polygraphy

    path = Path(results)
    try:
        with quiet_polygraphy():
            loaded = RunResults.load(str(path))
    except Exception as exc:
        raise MlpdeployError(f"cannot read {path} as Polygraphy run results ({type(exc).__name__}); "
                             "pass the JSON `polygraphy run ... --save-outputs` wrote") from None
    names = list(loaded.keys())
    if runner is None:
        mine = [n for n in names if n.startswith("mlpdeploy")]
        if len(mine) != 1:
            raise MlpdeployError(f"{path} holds runs of {', '.join(names) or 'no runner'}; name the candidate's with --candidate-runner")
        runner = mine[0]
    if runner not in names:
        raise MlpdeployError(f"{path} has no run of runner {runner!r}; it holds {', '.join(names) or 'none'}")
    iterations = [dict(it) for it in loaded[runner]]
    executed = f"outputs recorded by runner {runner} in {path.name}, not run here (the artifact: {candidate.executed})"
    inputs = candidate.manifest.inputs if candidate.manifest else []
    replay = dataclasses.replace(candidate, make_runner=lambda name: RecordedRunner(iterations, path.name, name, inputs), executed=executed)
    return replay, len(iterations)
