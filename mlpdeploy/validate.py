"""Stage 5: run reference and candidate on the same inputs through Polygraphy's Comparator,
report per-output errors, and decide pass/fail against tolerances.

Pass rule (Polygraphy's elementwise check): an element fails only when BOTH
|cand − ref| > atol and |cand − ref| / |ref| > rtol; an output passes when no element fails.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import ModelBundle
from .errors import MlpdeployError
from .inputs import cast_to_specs, check_inputs, generate_inputs, load_inputs
from .manifest import find_manifest

# Default tolerances per precision of the candidate (see README, "Tolerances").
TOLERANCES = {
    "fp32": (1e-4, 1e-3),
    "fp16": (2e-2, 2e-2),
    "bf16": (8e-2, 8e-2),
}


@dataclass
class OutputErrors:
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    passed: bool
    shape: list[int]

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass
class ValidationReport:
    reference: str
    candidate: str
    atol: float
    rtol: float
    passed: bool
    outputs: dict[str, OutputErrors]
    inputs: dict[str, list[int]]
    note: str | None = None
    task: dict[str, Any] | None = None
    layers: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        data = {
            "reference": self.reference,
            "candidate": self.candidate,
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "inputs": self.inputs,
            "outputs": {k: v.to_json() for k, v in self.outputs.items()},
        }
        if self.note:
            data["note"] = self.note
        if self.task is not None:
            data["task"] = self.task
        if self.layers is not None:
            data["layers"] = self.layers
        return {**data, **self.extra}


def tolerances(precision: str, atol: float | None = None, rtol: float | None = None) -> tuple[float, float]:
    """(atol, rtol): the explicit values, else the documented defaults for `precision`."""
    if precision not in TOLERANCES:
        raise MlpdeployError(f"unknown precision {precision!r}; choose one of {', '.join(TOLERANCES)}")
    default_atol, default_rtol = TOLERANCES[precision]
    return (default_atol if atol is None else atol, default_rtol if rtol is None else rtol)


def _side(model: ModelBundle | Path | str, name: str):
    """A Polygraphy runner and a manifest (if known) for one side of the comparison."""
    from .runners import TorchRunner, onnx_runner

    if isinstance(model, ModelBundle):
        return TorchRunner(model, name=f"{name}:torch"), None
    path = Path(model)
    return onnx_runner(path, name=f"{name}:onnxruntime"), find_manifest(path)


def validate(
    reference: ModelBundle | Path | str,
    candidate: Path | str,
    *,
    inputs: Path | str | None = None,
    precision: str = "fp32",
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    dims: dict[str, int] | None = None,
    note: str | None = None,
    layers: bool = False,
    layers_model: Path | str | None = None,
    task: bool = False,
    task_limit: int | None = None,
    max_metric_delta: float | None = None,
    candidate_runner=None,
) -> ValidationReport:
    """Compare `candidate` (an ONNX file) against `reference` (a torch ModelBundle or an ONNX file).

    With `layers` (torch reference only), also compare every layer's output, found through the
    module scopes of `layers_model` (default: the candidate; ORT-optimized graphs carry none).
    With `task` (a zoo reference with a task), also compute the task metric on both sides over
    the first `task_limit` eval samples; `max_metric_delta` turns its degradation into pass/fail.
    With `candidate_runner` (e.g. a TensorRT engine's Polygraphy runner), that runner is the
    candidate and `candidate` only names it and locates its manifest.
    """
    atol, rtol = tolerances(precision, atol, rtol)
    ref_runner, ref_manifest = _side(reference, "reference")
    if candidate_runner is not None:
        cand_runner, cand_manifest = candidate_runner, find_manifest(candidate)
    else:
        cand_runner, cand_manifest = _side(candidate, "candidate")
    manifest = cand_manifest or ref_manifest
    specs = manifest.inputs if manifest else (reference.inputs if isinstance(reference, ModelBundle) else None)
    if specs is None:
        raise MlpdeployError(f"no manifest beside {candidate} to generate inputs from; pass --inputs FILE")
    dim_ranges = manifest.dims if manifest else {}
    if inputs is not None:
        feeds = load_inputs(inputs)
        source = str(inputs)
    else:
        _check_dims(dims or {}, specs)
        feeds = [generate_inputs(specs, seed=seed, dims=dims)]
        source = "generated inputs"
    for feed in feeds:
        check_inputs(feed, specs, dim_ranges, source)
    feeds = [cast_to_specs(f, specs) for f in feeds]
    outputs = compare_runners(cand_runner, ref_runner, feeds, atol, rtol)
    layer_report = None
    if layers and isinstance(reference, ModelBundle):
        from .layerwise import compare_layers

        layer_path = layers_model or candidate
        errors, skipped = compare_layers(reference, layer_path, feeds[0])
        layer_report = {"model": str(layer_path), "errors": {k: v.to_json() for k, v in errors.items()}, "skipped": skipped}
    task_report = None
    if task or max_metric_delta is not None:
        if not isinstance(reference, ModelBundle) or reference.task is None:
            raise MlpdeployError("task metrics need a torch reference with a task (a trained zoo model, see `mlpdeploy zoo`)")
        from .task_eval import compare_task

        task_report = compare_task(reference, candidate, limit=task_limit, max_metric_delta=max_metric_delta)
    passed = all(o.passed for o in outputs.values()) and (task_report or {}).get("passed", True)
    return ValidationReport(
        reference=reference.source if isinstance(reference, ModelBundle) else str(reference),
        candidate=str(candidate),
        atol=atol,
        rtol=rtol,
        passed=passed,
        outputs=outputs,
        inputs={k: list(v.shape) for k, v in feeds[0].items()},
        note=note,
        task=task_report,
        layers=layer_report,
    )


def _check_dims(dims: dict[str, int], specs) -> None:
    known = {d for s in specs for d in s.dynamic_axes.values()}
    unknown = sorted(set(dims) - known)
    if unknown:
        raise MlpdeployError(f"unknown dim(s) {', '.join(unknown)}; the model's dynamic dims are {', '.join(sorted(known)) or 'none'}")


@contextlib.contextmanager
def _quiet_polygraphy():
    from polygraphy.logger import G_LOGGER

    old = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.module_severity = old


def compare_runners(candidate, reference, feeds: list[dict[str, np.ndarray]], atol: float, rtol: float) -> dict[str, OutputErrors]:
    """Run both runners through Polygraphy's Comparator; per-output errors, worst over feeds."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    with _quiet_polygraphy():
        results = Comparator.run([candidate, reference], data_loader=feeds)
        cand_name, ref_name = candidate.name, reference.name
        cand_iters, ref_iters = results[cand_name], results[ref_name]
        ref_outputs = set(ref_iters[0].keys())
        missing = sorted(ref_outputs - set(cand_iters[0].keys()))
        if missing:
            raise MlpdeployError(
                f"candidate has no output(s) {', '.join(missing)}; its outputs are {', '.join(cand_iters[0].keys())}"
            )
        accuracy = Comparator.compare_accuracy(
            results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat="elemwise")
        )
    verdicts = accuracy[0][(cand_name, ref_name)]
    errors: dict[str, OutputErrors] = {}
    for it, (cand, ref) in enumerate(zip(cand_iters, ref_iters)):
        for name in ref_iters[0].keys():
            e = _errors(np.asarray(cand[name]), np.asarray(ref[name]), bool(verdicts[it][name]))
            prev = errors.get(name)
            errors[name] = e if prev is None else _worst(prev, e)
    return errors


def error_stats(cand: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """max_abs, max_rel (relative to the reference), mean_abs and cosine similarity, in float64."""
    if cand.shape != ref.shape:
        raise MlpdeployError(f"output shapes differ: candidate {list(cand.shape)} vs reference {list(ref.shape)}")
    c, r = cand.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    diff = np.abs(c - r)
    rel = diff / np.maximum(np.abs(r), np.finfo(np.float64).tiny)
    denom = np.linalg.norm(c) * np.linalg.norm(r)
    return {
        "max_abs": float(diff.max(initial=0.0)),
        "max_rel": float(rel.max(initial=0.0)),
        "mean_abs": float(diff.mean()) if diff.size else 0.0,
        "cosine": float(c @ r / denom) if denom > 0 else float(np.array_equal(c, r)),
    }


def _errors(cand: np.ndarray, ref: np.ndarray, passed: bool) -> OutputErrors:
    return OutputErrors(**error_stats(cand, ref), passed=passed, shape=list(ref.shape))


def _worst(a: OutputErrors, b: OutputErrors) -> OutputErrors:
    return OutputErrors(
        max_abs=max(a.max_abs, b.max_abs),
        max_rel=max(a.max_rel, b.max_rel),
        mean_abs=max(a.mean_abs, b.mean_abs),
        cosine=min(a.cosine, b.cosine),
        passed=a.passed and b.passed,
        shape=a.shape,
    )

