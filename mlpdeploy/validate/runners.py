"""The reference side of a comparison as a Polygraphy runner: a torch module on the CPU.

(The candidate side comes from its backend: `mlpdeploy.runtime.Candidate.make_runner`.)
"""

from __future__ import annotations

import time
from collections import OrderedDict

from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from mlpdeploy.dtypes import numpy_dtype
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
        return OrderedDict(zip(self.bundle.resolved_output_names(len(outputs)), outputs))

    def deactivate_impl(self):
        release_weights(self.bundle.module)  # memory-mapped weights leave memory until the next run
        release_memory()
