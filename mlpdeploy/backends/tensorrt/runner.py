"""The TensorRT backends' runner: a serialized TensorRT or TensorRT-RTX engine as a Polygraphy runner, the
one runner validation (on a GPU), `runtime.Engine`, bench and serving use for an engine.

Both runtimes share the API used here (IExecutionContext, execute_async_v3). Device memory comes
from torch's CUDA allocator. Concurrency: an execution context is not thread-safe, so each call
takes one from a pool (a new one when all are busy), with its own CUDA stream and device buffers,
which are reused across calls and grown only when a larger shape arrives.

Written against the documented TensorRT Python API; neither runtime can run on the machines this
was written on (no GPU, and datacenter TensorRT cannot be installed), so what is tested here is the
one-line errors.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from mlpdeploy.backends.tensorrt.loader import EngineFromArtifact
from mlpdeploy.contract import TRT_DTYPES, tensor_to_numpy
from mlpdeploy.errors import MlpdeployError


class _Context:
    """One execution context with its stream and grow-only device buffers."""

    def __init__(self, engine, torch):
        self.context = engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.buffers: dict[str, object] = {}

    def buffer(self, torch, name: str, shape: tuple[int, ...], dtype):
        count = int(np.prod(shape))
        held = self.buffers.get(name)
        if held is None or held.numel() < count or held.dtype != dtype:
            held = self.buffers[name] = torch.empty(max(count, 1), dtype=dtype, device="cuda")
        return held[:count].view(shape)


class TensorRTRunner(BaseRunner):
    """Runs an engine loaded by `EngineFromArtifact` (or any callable returning (trt module, engine)); safe
    to call from many threads at once."""

    def __init__(self, engine_loader, name: str | None = None, runtime: str = "tensorrt"):
        super().__init__(name=name, prefix="mlpdeploy-trt-runner")
        self._loader, self.runtime = engine_loader, runtime

    def activate_impl(self):
        self.trt, self.engine = self._loader()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == self.trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._idle: queue.SimpleQueue[_Context] = queue.SimpleQueue()
        self._lock = threading.Lock()

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for name in self.input_names:
            shape = [d if d >= 0 else None for d in self.engine.get_tensor_shape(name)]
            dtype = TRT_DTYPES[self.engine.get_tensor_dtype(name).name]
            meta.add(name, dtype=getattr(DataType, {"float32": "FLOAT32", "float16": "FLOAT16", "bfloat16": "BFLOAT16"}.get(dtype, dtype.upper())),
                     shape=shape)
        return meta

    def _take(self, torch) -> _Context:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            with self._lock:  # creating contexts concurrently is not documented as safe
                return _Context(self.engine, torch)

    def infer_impl(self, feed_dict):
        import torch

        start = time.perf_counter()
        ctx = self._take(torch)
        try:
            with torch.cuda.stream(ctx.stream):
                for name in self.input_names:
                    host = torch.from_numpy(np.ascontiguousarray(feed_dict[name]))
                    device = ctx.buffer(torch, name, tuple(host.shape), host.dtype)
                    device.copy_(host, non_blocking=True)
                    ctx.context.set_input_shape(name, tuple(host.shape))
                    ctx.context.set_tensor_address(name, device.data_ptr())
                outputs = {}
                for name in self.output_names:
                    shape = tuple(ctx.context.get_tensor_shape(name))
                    dtype = getattr(torch, TRT_DTYPES[self.engine.get_tensor_dtype(name).name])
                    outputs[name] = ctx.buffer(torch, name, shape, dtype)
                    ctx.context.set_tensor_address(name, outputs[name].data_ptr())
                if not ctx.context.execute_async_v3(ctx.stream.cuda_stream):
                    raise MlpdeployError(f"{self.runtime} failed to run the engine (execute_async_v3 returned false)")
                result = {name: tensor.cpu() for name, tensor in outputs.items()}
            ctx.stream.synchronize()
        finally:
            self._idle.put(ctx)
        self.inference_time = time.perf_counter() - start
        return OrderedDict((name, tensor_to_numpy(t)) for name, t in result.items())

    def deactivate_impl(self):
        del self.trt, self.engine, self._idle, self._lock, self.input_names, self.output_names

    def __del__(self):
        if getattr(self, "is_active", False):  # collected with its Engine: release quietly (see OrtRunner.__del__)
            try:
                self.deactivate()
            except Exception:
                pass


def trt_runner(engine_path: Path | str, backend: str, name: str | None = None, plugin_libraries: list[str] | None = None) -> TensorRTRunner:
    """The runner for an engine file built by `backend` (`tensorrt` or `tensorrt-rtx`)."""
    return TensorRTRunner(EngineFromArtifact(engine_path, backend, plugin_libraries), name=name, runtime=backend)
