"""Stage 5, validate: run reference and candidate on the same inputs and judge the difference.

`validate` makes the inputs once (validate/inputs.py: the task's held-out samples; a cached
decoder's decode step on the reference's own prefill cache) and calls three sibling comparisons:
outputs (always, judged per output by validate/tolerance.py), layers (per-layer errors, torch
reference only) and task (the task's metric and top-1 agreement). The
candidate is a `Candidate` (what a backend built, as it runs), or an .onnx path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlpdeploy.backends import Candidate, onnx_candidate
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.memory import release_memory, step
from mlpdeploy.model.bundle import InputSpec, ModelBundle
from mlpdeploy.model.draft_heads import heads_reference
from mlpdeploy.model.kv_cache import CacheLayout, with_kv_cache
from mlpdeploy.model.manifest import Manifest
from mlpdeploy.model.overrides import describe_override, override_modules
from mlpdeploy.validate.bisect import bisect_layers, reduce_divergence
from mlpdeploy.validate.inputs import ValidationInputs, validation_inputs
from mlpdeploy.validate.layers import compare_layers
from mlpdeploy.validate.metrics import ErrorStats
from mlpdeploy.validate.outputs import Remembered, compare_outputs, quiet_polygraphy, run_all
from mlpdeploy.validate.runners import TorchRunner
from mlpdeploy.validate.task import compare_task
from mlpdeploy.validate.tolerance import Tolerance, tolerances


@dataclass
class ValidateOptions:
    """What to compare and how strictly.

    inputs: a Polygraphy inputs JSON or .npz (default: the task's held-out samples, else generated
    from the manifest with `seed`; `dims` sets batch, seq and, for a cached decoder, the prefill's
    `past`; see mlpdeploy.validate.inputs). Tolerances default per `precision`, scaled by each
    output's RMS (mlpdeploy.validate.tolerance); an explicit `atol` is absolute. `layers`: also compare every layer (torch reference only). `task`: also the
    task metric over the first `task_limit` eval samples (None: all); `max_metric_delta` (implies
    `task`) fails the run when the metric degrades by more than that, in its own units, or with
    `relative_metric_delta` as a fraction of the reference's metric (0.01 = 1% worse).

    A candidate whose manifest records module overrides (an approximate rewrite such as
    drop-layers) is compared, outputs and layers, with the torch reference edited the same way
    (mlpdeploy.model.overrides): that comparison proves the rewrite; the task metric is the
    unedited model's, so its delta is what the rewrite costs. `task_reference` judges the task
    metric instead of the reference (compile: the original model, when the reference is its
    weight-quantized copy).
    """

    inputs: Path | str | None = None
    precision: str = "fp32"
    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    dims: dict[str, int] = field(default_factory=dict)
    layers: bool = False
    task: bool = False
    task_limit: int | None = None
    max_metric_delta: float | None = None
    relative_metric_delta: bool = False
    bisect: bool = False  # find the first layer over tolerance (validate/bisect.py)
    reduce: Path | str | None = None  # write the smallest module scope over tolerance here (+ inputs, reference)
    task_reference: ModelBundle | None = None


@dataclass
class ValidationReport:
    reference: str
    candidate: str
    executed: str
    tolerance: Tolerance
    passed: bool
    outputs: dict[str, ErrorStats]
    inputs: dict[str, list[int]]  # the first feed's shapes
    input_data: dict[str, Any] = field(default_factory=dict)  # ValidationInputs.to_json(): source, feeds
    note: str | None = None
    task: dict[str, Any] | None = None
    layers: dict[str, Any] | None = None
    reference_overrides: dict[str, str] = field(default_factory=dict)  # how the torch reference was edited (drop-layers)
    bisect: dict[str, Any] | None = None

    def to_json(self) -> dict:
        data = {
            "reference": self.reference,
            "candidate": self.candidate,
            "executed": self.executed,
            "passed": self.passed,
            "tolerance": self.tolerance.to_json(),
            "inputs": self.inputs,
            "input_data": self.input_data,
            "outputs": {k: v.to_json() for k, v in self.outputs.items()},
        }
        if self.note:
            data["note"] = self.note
        if self.reference_overrides:
            data["reference_overrides"] = self.reference_overrides
        if self.task is not None:
            data["task"] = self.task
        if self.layers is not None:
            data["layers"] = self.layers
        if self.bisect is not None:
            data["bisect"] = self.bisect
        return data


def as_candidate(candidate: Candidate | Path | str) -> Candidate:
    """A Candidate as given, or an .onnx path run in ONNX Runtime with its saved session settings."""
    return candidate if isinstance(candidate, Candidate) else onnx_candidate(candidate)


def validate(reference: ModelBundle | Path | str, candidate: Candidate | Path | str, options: ValidateOptions | None = None) -> ValidationReport:
    """Compare `candidate` against `reference` (a torch ModelBundle, or an .onnx file run in ONNX Runtime)."""
    options = options or ValidateOptions()
    candidate = as_candidate(candidate)
    tolerance = tolerances(options.precision, options.atol, options.rtol)
    if isinstance(reference, ModelBundle) and reference.cache is None and candidate.manifest and candidate.manifest.cache:
        reference = with_kv_cache(reference)  # the candidate was exported with its KV cache: so is the torch reference
    baseline, overrides = reference, candidate.manifest.module_overrides() if candidate.manifest else {}
    if isinstance(reference, ModelBundle) and candidate.manifest is not None and candidate.manifest.draft_heads:
        # draft heads built in (pass draft-heads): the reference computes the torch heads too
        reference = heads_reference(reference, candidate.manifest.draft_heads, Path(candidate.artifact).parent)
    if overrides and isinstance(reference, ModelBundle):
        # An approximate rewrite (drop-layers, sparse-mlp) is exact against the torch model edited as it says:
        # outputs and layers are compared with that; the task metric with the unedited model.
        reference = override_modules(reference, overrides, inputs=[i.name for i in candidate.manifest.inputs],
                                     outputs=[o["name"] for o in candidate.manifest.outputs])
    if isinstance(reference, ModelBundle):
        ref_runner, ref_manifest = TorchRunner(reference, name="reference:torch"), None
    else:
        ref_side = onnx_candidate(reference)
        ref_runner, ref_manifest = ref_side.make_runner("reference:onnxruntime"), ref_side.manifest
    judge = options.task_reference or baseline
    with step("outputs"), quiet_polygraphy():
        # one model resident at a time: the reference runs every feed and lets its weights go before
        # the candidate's session is made, and that session is freed before the outputs are compared
        with ref_runner:
            run_reference = Remembered(ref_runner)  # a cached decoder's prefill runs once: its cache feeds the decode step
            inputs = _inputs(options, candidate, reference, judge, ref_manifest, run_reference)
            references = run_all(run_reference, inputs.feeds)
        release_memory()
        with candidate.make_runner("candidate") as cand_runner:
            candidates = run_all(cand_runner.infer, inputs.feeds)
        release_memory()
        outputs = compare_outputs(candidates, references, tolerance, inputs.names)
        del candidates, references, run_reference
        release_memory()  # the comparison's float64 copies of the logits go back to the system before the layers run
    layers = task = None
    if options.layers and isinstance(reference, ModelBundle):
        with step("layers"):
            layers = _layer_report(reference, candidate, inputs.feeds[0], tolerance)
    bisect = _bisect_report(reference, candidate, inputs.feeds[0], tolerance, options) if options.bisect or options.reduce else None
    if options.task or options.max_metric_delta is not None:
        if not isinstance(judge, ModelBundle) or judge.task is None:
            raise MlpdeployError("task metrics need a torch reference with a task: a trained zoo model (see `mlpdeploy zoo`), or --data FILE (docs/data.md)")
        with step("task"):
            task = compare_task(judge, candidate, limit=options.task_limit, max_metric_delta=options.max_metric_delta,
                                relative=options.relative_metric_delta)
    passed = all(o.passed for o in outputs.values()) and (task or {}).get("passed", True)
    return ValidationReport(
        reference=reference.source if isinstance(reference, ModelBundle) else str(reference),
        candidate=str(candidate.artifact),
        executed=candidate.executed,
        tolerance=tolerance,
        passed=passed,
        outputs=outputs,
        inputs={k: list(v.shape) for k, v in inputs.feeds[0].items()},
        input_data=inputs.to_json(),
        note=candidate.note,
        task=task,
        layers=layers,
        bisect=bisect,
        reference_overrides={k: describe_override(v) for k, v in overrides.items()} if isinstance(reference, ModelBundle) else {},
    )


def _inputs(options: ValidateOptions, candidate: Candidate, reference, judge, ref_manifest: Manifest | None, run_reference) -> ValidationInputs:
    """The feeds both sides run on (mlpdeploy.validate.inputs): the inputs file, else the task's held-out
    samples, else generated; a cached decoder's decode step on the reference's own prefill cache."""
    manifest = candidate.manifest or ref_manifest
    specs: list[InputSpec] | None = manifest.inputs if manifest else (reference.inputs if isinstance(reference, ModelBundle) else None)
    if specs is None:
        raise MlpdeployError(f"no manifest beside {candidate.artifact} to generate inputs from; pass --inputs FILE")
    if options.inputs is None:
        _check_dims(options.dims, specs)
    task = judge.task if isinstance(judge, ModelBundle) else None
    return validation_inputs(specs, manifest.dims if manifest else {}, path=options.inputs, task=task, cache=_cache(manifest, reference),
                             run_reference=run_reference, dims=options.dims, seed=options.seed)


def _cache(manifest: Manifest | None, reference) -> CacheLayout | None:
    """The KV cache the candidate reads (a rewrite may have dropped some layers'), else the reference's."""
    if manifest is not None and manifest.cache is not None:
        return CacheLayout.from_json(manifest.cache)
    return reference.cache if isinstance(reference, ModelBundle) else None


def _layer_report(reference: ModelBundle, candidate: Candidate, feed: dict[str, np.ndarray], tolerance: Tolerance) -> dict:
    if candidate.layer_model is None:
        return {"model": None, "errors": {}, "skipped": {"*": f"{candidate.executed}: no graph with module scopes to compare layers on"}}
    errors, skipped = compare_layers(reference, candidate.layer_model, feed, tolerance)
    return {"model": str(candidate.layer_model), "errors": {k: v.to_json() for k, v in errors.items()}, "skipped": skipped}


def _bisect_report(reference, candidate: Candidate, feed: dict[str, np.ndarray], tolerance: Tolerance, options: ValidateOptions) -> dict:
    """The first layer over tolerance and, with `options.reduce`, the smallest scope over it, written out."""
    if not isinstance(reference, ModelBundle):
        raise MlpdeployError("--bisect and --reduce compare layers with torch: give a MODEL as --reference, not an .onnx file")
    if candidate.layer_model is None:
        raise MlpdeployError(f"--bisect/--reduce need a graph with module scopes; {candidate.executed} has none "
                             "(validate the rewritten .onnx, or an artifact whose backend keeps its parsed graph)")
    report = bisect_layers(reference, candidate.layer_model, feed, tolerance)
    if options.reduce:
        report.reduced = reduce_divergence(reference, candidate.layer_model, feed, tolerance, options.reduce)
    data = report.to_json()
    data["model"] = str(candidate.layer_model)
    if options.reduce:
        data["reduced"] = report.reduced  # None: no scope over tolerance, nothing written
    return data


def _check_dims(dims: dict[str, int], specs: list[InputSpec]) -> None:
    known = {d for s in specs for d in s.dynamic_axes.values()}
    unknown = sorted(set(dims) - known)
    if unknown:
        raise MlpdeployError(f"unknown dim(s) {', '.join(unknown)}; the model's dynamic dims are {', '.join(sorted(known)) or 'none'}")
