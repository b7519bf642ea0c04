"""Run a serialized TensorRT or TensorRT-RTX engine behind `Engine` (same `run(feed)` as ONNX Runtime).

The engine's manifest names the backend that built it (`tensorrt` → the `tensorrt` module,
extra `tensorrt`; `tensorrt-rtx` → `tensorrt_rtx_bindings`, extra `rtx`); both runtimes share
the API used here (Runtime, deserialize_cuda_engine, IExecutionContext, execute_async_v3).
Device memory comes from torch's CUDA allocator. Concurrency: an execution context is not
thread-safe, so each caller takes one from a pool (a new one when all are busy), with its own
CUDA stream and device buffers, which are reused across calls and grown only when a larger
shape arrives (buffer reuse).

Written against the documented TensorRT Python API; neither runtime can run here (no GPU, and
datacenter TensorRT cannot be installed), so what is tested here is the one-line errors.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np

from mlpdeploy.errors import MlpdeployError, first_line, require

MODULES = {"tensorrt": ("tensorrt", "tensorrt"), "tensorrt-rtx": ("tensorrt_rtx_bindings", "rtx")}
# TensorRT DataType name → torch dtype name
DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
          "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


def import_runtime(backend: str):
    """The TensorRT module for engines built by `backend`, or a one-line error naming the extra."""
    if backend not in MODULES:
        raise MlpdeployError(f"the engine's manifest names backend {backend!r}; expected one of {', '.join(MODULES)}")
    module, extra = MODULES[backend]
    return require(module, extra, f"running {backend} engines")


def _require_cuda():
    import torch

    if not torch.cuda.is_available():
        raise MlpdeployError("running a TensorRT engine needs a CUDA GPU, and torch sees none here; serve the .onnx build instead")
    return torch


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


class TensorRTSession:
    """A deserialized engine: `run(feed) -> {name: array}`, safe from many threads."""

    def __init__(self, trt, engine, runtime_name: str):
        self.trt, self.engine, self.runtime = trt, engine, runtime_name
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._idle: queue.SimpleQueue[_Context] = queue.SimpleQueue()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, backend: str) -> "TensorRTSession":
        trt = import_runtime(backend)
        _require_cuda()
        logger = trt.Logger(trt.Logger.WARNING)
        if backend == "tensorrt":  # engines with mlpdeploy's plugin layers need their creators registered
            from mlpdeploy.plugins.trt_register import register_plugins

            trt.init_libnvinfer_plugins(logger, "")
            register_plugins(trt)
        runtime = trt.Runtime(logger)
        try:
            engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
        except Exception as exc:
            raise MlpdeployError(f"{backend} cannot load {path}: {first_line(exc)}") from None
        if engine is None:
            raise MlpdeployError(f"{backend} cannot load {path}: built for another GPU or TensorRT version? rebuild it here")
        return cls(trt, engine, backend)

    def _take(self, torch) -> _Context:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            with self._lock:  # creating contexts concurrently is not documented as safe
                return _Context(self.engine, torch)

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ctx = self._take(torch)
        try:
            with torch.cuda.stream(ctx.stream):
                for name in self.input_names:
                    host = torch.from_numpy(np.ascontiguousarray(feed[name]))
                    device = ctx.buffer(torch, name, tuple(host.shape), host.dtype)
                    device.copy_(host, non_blocking=True)
                    ctx.context.set_input_shape(name, tuple(host.shape))
                    ctx.context.set_tensor_address(name, device.data_ptr())
                outputs = {}
                for name in self.output_names:
                    shape = tuple(ctx.context.get_tensor_shape(name))
                    dtype = getattr(torch, DTYPES[self.engine.get_tensor_dtype(name).name])
                    outputs[name] = ctx.buffer(torch, name, shape, dtype)
                    ctx.context.set_tensor_address(name, outputs[name].data_ptr())
                if not ctx.context.execute_async_v3(ctx.stream.cuda_stream):
                    raise MlpdeployError(f"{self.runtime} failed to run the engine (execute_async_v3 returned false)")
                result = {name: tensor.cpu() for name, tensor in outputs.items()}
            ctx.stream.synchronize()
            return {name: _to_numpy(t) for name, t in result.items()}
        finally:
            self._idle.put(ctx)


def _to_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()
