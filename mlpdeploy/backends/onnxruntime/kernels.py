"""`--ort-kernels` for the onnxruntime backend: mlpdeploy's compiled CPU kernels, opt-in.

The library (plugins/ort/library.py) is compiled with the system C compiler into the cache
directory (`<cache>/ort-kernels/`, see backends/tensorrt/cache.py for where that is), copied
beside the built model as `<name>.kernels.so`, and named in the saved session settings, so
every later run of the artifact registers it. Nodes the library cannot compute (a dtype other
than the kernel's) are refused before anything is written: with the library registered, ONNX
Runtime would reject them instead of falling back to the function body.
"""

from __future__ import annotations

import collections
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from mlpdeploy.backends.tensorrt.cache import cache_dir
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.onnx_io import load_onnx
from mlpdeploy.plugins.ort.library import KERNEL_OPS, build_library
from mlpdeploy.plugins.registry import DOMAIN


@dataclass
class KernelLibrary:
    path: Path  # the built library (in the cache)
    nodes: dict[str, int]  # op type -> how many nodes of the model it computes

    def to_json(self) -> dict:
        return {"library": str(self.path), "nodes": self.nodes}


def kernel_file_name(output: Path) -> str:
    """`x.ort.onnx` → `x.ort.kernels.so`: the library's copy beside a built model."""
    return f"{output.name.removesuffix('.onnx')}.kernels.so"


def kernel_nodes(model: ir.Model) -> dict[str, int]:
    """How many main-graph nodes each kernel would compute; a node of a dtype it lacks is a one-line error."""
    counts: collections.Counter[str] = collections.Counter()
    for node in model.graph:
        if node.domain != DOMAIN or node.op_type not in KERNEL_OPS:
            continue
        dtype = node.inputs[0].dtype if node.inputs and node.inputs[0] is not None else None
        allowed = KERNEL_OPS[node.op_type]
        if dtype is not None and dtype.numpy().name not in allowed:
            raise MlpdeployError(
                f"{DOMAIN}::{node.op_type} node {node.name!r} computes {dtype.numpy().name}, but the compiled CPU kernel takes "
                f"{', '.join(allowed)} only; build without --ort-kernels (the portable function body takes any float type)"
            )
        counts[node.op_type] += 1
    return dict(counts)


def prepare(model_path: Path, extra: dict[str, Any]) -> KernelLibrary:
    """Check the model's nodes, then build (or reuse) the library."""
    nodes = kernel_nodes(ir.from_proto(load_onnx(model_path, load_external_data=False)))
    root = cache_dir(extra)
    directory = root / "ort-kernels" if root is not None else Path(tempfile.mkdtemp(prefix="mlpdeploy-ort-kernels-"))
    try:
        return KernelLibrary(build_library(directory), nodes)
    except OSError as exc:
        raise MlpdeployError(f"cannot build mlpdeploy's CPU kernels in {directory}: {exc.strerror}; set --cache-dir") from None
