"""`--ort-kernels` for the onnxruntime backend: mlpdeploy's compiled CPU kernels, opt-in.

The library (plugins/ort/library.py) is compiled with the system C compiler into the cache
directory (`<cache>/ort-kernels/`, `BuildOptions.cache_root()` says where that is), copied
beside the built model as `<name>.kernels.so`, and named in the saved session settings, so
every later run of the artifact registers it. Nodes the library cannot compute (a dtype other
than the kernel's) are refused before anything is written: with the library registered, ONNX
Runtime would reject them instead of falling back to the function body.
"""

from __future__ import annotations

import collections
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx import helper

from mlpdeploy.contract import DOMAIN, MS_DOMAIN
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.onnx_io import load_onnx
from mlpdeploy.plugins.ort.library import KERNEL_OPS, build_library


@dataclass
class KernelLibrary:
    path: Path  # the built library (in the cache)
    nodes: dict[str, int]  # op type -> how many nodes of the model it computes

    def to_json(self) -> dict:
        return {"library": str(self.path), "nodes": self.nodes}


# A rewrite of a loaded optimized model onto kernel ops: (op type -> nodes rewritten, the op functions they call).
KernelRewrite = Callable[[onnx.ModelProto], tuple[dict[str, int], list[onnx.FunctionProto]]]


def use_kernel_ops(saved: Path, rewrites: Sequence[KernelRewrite]) -> dict[str, int]:
    """Run `rewrites` (nbits_kernels.nbits_rewrite, attention_kernels.attention_rewrite) on the optimized
    model at `saved`, loaded and saved once: the functions the rewritten nodes call (their bodies, the
    com.microsoft nodes they stand for) and the opsets those need are added. Returns op type → nodes rewritten."""
    model = onnx.load(str(saved), load_external_data=False)
    counts, functions = {}, []
    for rewrite in rewrites:
        done, needed = rewrite(model)
        counts.update(done)
        functions += needed
    if counts:
        have = {(f.domain, f.name) for f in model.functions}
        model.functions.extend(f for f in functions if (f.domain, f.name) not in have)
        for domain, version in ((DOMAIN, 1), (MS_DOMAIN, 1)):
            if not any(o.domain == domain for o in model.opset_import):
                model.opset_import.append(helper.make_opsetid(domain, version))
        onnx.save(model, str(saved))
    return counts


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


def prepare(model_path: Path, root: Path | None) -> KernelLibrary:
    """Check the model's nodes, then build (or reuse) the library in `root`/ort-kernels (None: a temporary directory)."""
    nodes = kernel_nodes(ir.from_proto(load_onnx(model_path, load_external_data=False)))
    directory = root / "ort-kernels" if root is not None else Path(tempfile.mkdtemp(prefix="mlpdeploy-ort-kernels-"))
    try:
        return KernelLibrary(build_library(directory), nodes)
    except OSError as exc:
        raise MlpdeployError(f"cannot build mlpdeploy's CPU kernels in {directory}: {exc.strerror}; set --cache-dir") from None


def restore_function_bodies(saved: Path, source: Path) -> list[str]:
    """Give the nodes the library computes their ONNX function bodies back, in place.

    ONNX Runtime saves an optimized model without the model-local functions its registered kernels
    replaced, so the artifact would load nowhere without the library. With the bodies back it runs
    in stock ONNX Runtime too (through the bodies; a registered kernel still wins over a body, as
    measured on ONNX Runtime 1.32), so `polygraphy run ARTIFACT --onnxrt` compares the two.
    Returns the functions restored, as `domain::name[:overload]`.
    """
    model = onnx.load(str(saved), load_external_data=False)
    available = {(f.domain, f.name, f.overload): f for f in onnx.load(str(source), load_external_data=False).functions}
    have = {(f.domain, f.name, f.overload) for f in model.functions}
    wanted, restored = list(model.graph.node), []
    while wanted:
        node = wanted.pop()
        key = (node.domain, node.op_type, node.overload)
        if key in available and key not in have:
            have.add(key)
            model.functions.append(available[key])
            wanted.extend(available[key].node)  # a body may call other functions
            restored.append(f"{key[0]}::{key[1]}" + (f":{key[2]}" if key[2] else ""))
    if restored:
        onnx.save(model, str(saved))
    return sorted(restored)
