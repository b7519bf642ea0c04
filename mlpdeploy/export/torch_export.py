"""Stage 1: torch → ONNX with dynamic dims, module scopes on nodes, and a manifest beside it.

The bundle is read, never changed: outputs nobody named are named in the ONNX graph and in
the manifest (`output`, or `output_0`, `output_1`, ...), and reported in `ExportResult`.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
import torch

from mlpdeploy import __version__
from mlpdeploy.atomic import staged_files
from mlpdeploy.contract import DEFAULT_OPSET
from mlpdeploy.errors import MlpdeployError, first_line
from mlpdeploy.memory import step
from mlpdeploy.model.bundle import ModelBundle
from mlpdeploy.model.manifest import Manifest, manifest_path
from mlpdeploy.onnx_io import write_onnx
from mlpdeploy.plugins.torch_export import attach_functions, translation_table
from mlpdeploy.scopes import module_path

from .op_weights import fold_op_weights, name_op_weights

_ANONYMOUS = re.compile(r"val_\d+")


@dataclass
class ExportResult:
    model_path: Path
    manifest_path: Path
    manifest: Manifest
    seconds: float

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.manifest.outputs]


def export_model(bundle: ModelBundle, output: Path | str, opset: int = DEFAULT_OPSET, debug: bool = False) -> ExportResult:
    """Export `bundle` to `output` (ONNX) and `<name>.manifest.json`, both written atomically."""
    output = Path(output)
    start = time.perf_counter()
    with step("torch.onnx.export"):
        program = _torch_export(bundle, opset, debug)
    model = program.model
    if attach_functions(model):  # mlpdeploy ops called from torch: overloads, plugin attributes, function bodies
        fold_op_weights(model)
        name_op_weights(model)
    _name_outputs(model.graph, bundle.resolved_output_names(len(model.graph.outputs)))
    _name_folded_weights(model.graph)
    model.metadata_props["mlpdeploy.source"] = bundle.source
    manifest = Manifest(
        source=bundle.source,
        kind=bundle.kind,
        opset=opset,
        inputs=bundle.inputs,
        outputs=[_value_info(v) for v in model.graph.outputs],
        dims=bundle.dim_bounds(),
        cache=bundle.cache.to_json() if bundle.cache is not None else None,
        versions={"torch": torch.__version__, "onnx": onnx.__version__, "mlpdeploy": __version__},
    )
    seconds = time.perf_counter() - start
    manifest.history.append({"stage": "export", "seconds": round(seconds, 3)})
    with step("save"), staged_files(output) as tmp:
        write_onnx(model, tmp)
        manifest.save_beside(tmp)
    return ExportResult(output, manifest_path(output), manifest, seconds)


def dynamic_shapes(bundle: ModelBundle) -> tuple[dict[int, torch.export.Dim], ...]:
    """torch.export dynamic shapes for the bundle's inputs; dims with one name are shared."""
    dims: dict[str, torch.export.Dim] = {}
    shapes = []
    for spec in bundle.inputs:
        axes = {}
        for axis, name in spec.dynamic_axes.items():
            if name not in dims:
                lo, hi = bundle.dim_range(name)
                dims[name] = torch.export.Dim(_identifier(name), min=lo, max=hi)
            axes[axis] = dims[name]
        shapes.append(axes)
    return _group_varargs(bundle.module, shapes)


def _group_varargs(module: torch.nn.Module, shapes: list) -> tuple:
    """torch.export wants the shapes of a `*args` parameter as one tuple, in the signature's structure."""
    params = list(inspect.signature(module.forward).parameters.values())
    star = next((i for i, p in enumerate(params) if p.kind == p.VAR_POSITIONAL), None)
    if star is None or star >= len(shapes):
        return tuple(shapes)
    return (*shapes[:star], tuple(shapes[star:]))


def _identifier(name: str) -> str:
    return re.sub(r"\W", "_", name.replace("+", "_plus_")) if not name.isidentifier() else name


def _torch_export(bundle: ModelBundle, opset: int, debug: bool):
    program = bundle.exported_program
    target = program if program is not None else bundle.module
    args = tuple(bundle.example_inputs.values())
    sink = io.StringIO()
    redirect = contextlib.nullcontext() if debug else contextlib.redirect_stdout(sink)
    try:
        with redirect, torch.no_grad(), warnings.catch_warnings(), _quiet_torch_logs(debug):
            if not debug:
                warnings.simplefilter("ignore")
            return torch.onnx.export(
                target,
                args,
                dynamo=True,
                dynamic_shapes=None if program is not None else dynamic_shapes(bundle),
                input_names=[s.name for s in bundle.inputs],
                output_names=bundle.output_names or None,
                opset_version=opset,
                custom_translation_table=translation_table(),
                optimize=True,
                verbose=False,
            )
    except Exception as exc:
        raise MlpdeployError(
            f"torch.onnx.export failed for {bundle.source}: {first_line(exc)} (rerun with --debug for the full export log)"
        ) from exc


@contextlib.contextmanager
def _quiet_torch_logs(debug: bool):
    """Silence the exporter's logging (e.g. "torchvision is not installed") unless debugging."""
    logger = logging.getLogger("torch.onnx")
    old = logger.level
    if not debug:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(old)


def _name_outputs(graph: ir.Graph, names: list[str]) -> None:
    """Give the graph's outputs `names` (the exporter already used the bundle's own names)."""
    for value, name in zip(graph.outputs, names):
        value.name = name


def _name_folded_weights(graph: ir.Graph) -> None:
    """Give weights the exporter folded into anonymous `val_N` initializers their module's name.

    With optimize=True the exporter folds each Linear's transpose into a new [in, out]
    initializer; it is renamed `<module>.weight_t` (the `_t` says it is transposed).
    """
    for node in graph:
        if node.op_type not in ("MatMul", "Gemm") or len(node.inputs) < 2:
            continue
        weight = node.inputs[1]
        module = module_path(node)
        if weight is None or not module or not weight.is_initializer() or not _ANONYMOUS.fullmatch(weight.name or ""):
            continue
        new_name = f"{module}.weight_t"
        if len(weight.uses()) == 1 and new_name not in graph.initializers:
            weight.name = new_name


def _value_info(value: ir.Value) -> dict:
    shape = [d if isinstance(d, int) else str(d) for d in value.shape] if value.shape is not None else None
    return {"name": value.name, "dtype": value.dtype.numpy().name if value.dtype is not None else None, "shape": shape}
