"""Polygraphy runners for the two sides of a comparison: a torch module, an ONNX model in ORT."""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.common import TensorMetadata

from .backends.onnxruntime import make_session, saved_session_config
from .bundle import ModelBundle, default_output_names, numpy_dtype, set_eval


def flatten_outputs(result) -> list[torch.Tensor]:
    """A module's outputs as a flat list of tensors (tensor, tuple/list, dict or HF ModelOutput)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):  # includes transformers.ModelOutput
        result = list(result.values())
    out: list[torch.Tensor] = []
    for item in result:
        out.extend(flatten_outputs(item))
    return out


class TorchRunner(BaseRunner):
    """Runs a torch module on CPU (Polygraphy's PytRunner moves everything to CUDA)."""

    def __init__(self, bundle: ModelBundle, name: str | None = None):
        super().__init__(name=name, prefix="torch-runner")
        self.bundle = bundle

    def activate_impl(self):
        set_eval(self.bundle.module)

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for spec in self.bundle.inputs:
            meta.add(spec.name, dtype=numpy_dtype(spec.dtype), shape=[d if isinstance(d, int) else -1 for d in spec.shape])
        return meta

    def infer_impl(self, feed_dict):
        args = [torch.from_numpy(np.ascontiguousarray(feed_dict[s.name])) for s in self.bundle.inputs]
        start = time.perf_counter()
        with torch.no_grad():
            outputs = flatten_outputs(self.bundle.module(*args))
        self.inference_time = time.perf_counter() - start
        names = self.bundle.output_names or default_output_names(len(outputs))
        return OrderedDict((n, t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()) for n, t in zip(names, outputs))

    def deactivate_impl(self):
        pass


def onnx_runner(model_path: Path | str, name: str | None = None, config: dict | None = None) -> OnnxrtRunner:
    """An ORT runner with the session settings saved beside the model by `build`, if any."""
    session = make_session(model_path, config if config is not None else saved_session_config(model_path))
    return OnnxrtRunner(session, name=name)

