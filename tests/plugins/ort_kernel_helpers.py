"""Helpers of the tests of mlpdeploy's compiled ONNX Runtime kernels: a model rewritten by a kernel pass, a session."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from mlpdeploy.backends.onnxruntime.kernels import KernelRewrite, use_kernel_ops
from mlpdeploy.plugins.ort import library


def rewritten(proto: onnx.ModelProto, tmp_path: Path, rewrite: KernelRewrite) -> onnx.ModelProto:
    """`proto` saved and rewritten by `rewrite` (through `use_kernel_ops`, as a build does), which must rewrite exactly one node."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    assert sum(use_kernel_ops(path, [rewrite]).values()) == 1
    return onnx.load(str(path))


def session(proto: onnx.ModelProto, lib=None, threads: int = 2) -> ort.InferenceSession:
    """A CPU session for `proto`, with the kernels library `lib` registered (None: the function bodies)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = threads, 3
    if lib is not None:
        library.register(options, lib)
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
