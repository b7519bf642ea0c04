"""`analyze_model`: run analyses on calibration data and write their findings as a plan."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlpdeploy import __version__
from mlpdeploy.analyze.base import AnalysisContext
from mlpdeploy.analyze.plan import Plan
from mlpdeploy.analyze.registry import ANALYSES
from mlpdeploy.backends import get_backend
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import ModelBundle
from mlpdeploy.model.calibration import calibration_batches
from mlpdeploy.model.source import load_model
from mlpdeploy.model.tasks import DataOptions, attach_task

CALIBRATION_BATCH = 8


@dataclass
class AnalyzeOptions:
    """Which analyses (name → the value of its flag, None for plain flags) and on what data.

    `data`: the user's data (`--data`), which defines the task (`mlpdeploy.model.tasks.resolve_task`):
    calibration comes from its calibration split and planners judge on its held-out split.
    `calibration`: a `.npz` / Polygraphy inputs JSON used for calibration only (default: the
    task's calibration split, else inputs generated from its specs); `samples` rows in batches of
    8, shuffled by `seed`.
    `max_metric_delta`: the quality budget planners spend, in the task metric's units (perplexity
    points, accuracy fraction), or with `relative_budget` a fraction of the model's own metric
    (0.01 = 1% worse); planners judge it on the first `eval_samples` held-out eval samples.
    Planners count costs for `backend` (the build backend the plan is for).
    """

    analyses: dict[str, str | None]
    calibration: Path | str | None = None
    samples: int = 64
    seed: int = 0
    max_metric_delta: float | None = None
    relative_budget: bool = False
    eval_samples: int | None = 128
    backend: str = "onnxruntime"  # what planners count costs for
    data: DataOptions | None = None


def analyze_model(model: str | ModelBundle, options: AnalyzeOptions, on_analysis: Callable[[str], None] | None = None) -> Plan:
    """Run `options.analyses` on `model` (a MODEL spec or a bundle); the plan of their findings."""
    if not options.analyses:
        raise MlpdeployError(f"choose at least one analysis: {', '.join('--' + n for n in ANALYSES.names())}")
    if options.samples < 1:
        raise MlpdeployError(f"--samples must be at least 1, got {options.samples}")
    classes = {name: ANALYSES.load(name) for name in options.analyses}  # unknown names fail before any work
    get_backend(options.backend)
    if options.calibration is not None and options.data is not None and options.data.path is not None:
        raise MlpdeployError("give --data or --calibration, not both (--data FILE.npz calibrates on arrays too)")
    bundle = model if isinstance(model, ModelBundle) else load_model(model)
    bundle = attach_task(bundle, options.data)
    batches = calibration_batches(bundle, n=math.ceil(options.samples / CALIBRATION_BATCH), batch_size=CALIBRATION_BATCH,
                                  seed=options.seed, path=options.calibration)
    ctx = AnalysisContext(bundle, batches, seed=options.seed, max_metric_delta=options.max_metric_delta,
                          relative_budget=options.relative_budget, eval_samples=options.eval_samples,
                          labeled=options.calibration is None and bundle.task is not None, calibration=options.calibration,
                          backend=options.backend)
    plan = Plan(
        model=bundle.source,
        created_with=_versions(),
        calibration={"source": _calibration_source(bundle, options.calibration), "samples": sum(_rows(b) for b in batches),
                     "batches": len(batches), "seed": options.seed},
    )
    if options.max_metric_delta is not None and bundle.task is not None:
        plan.budget = {"metric": bundle.task.metric, "max_delta": options.max_metric_delta, "relative": options.relative_budget}
    for name, cls in classes.items():
        if on_analysis is not None:
            on_analysis(name)
        result = cls(options.analyses[name]).run(ctx)
        plan.analyses[name] = result.data
        plan.passes.extend(result.passes)
        plan.predicted.update(result.predicted)
        if result.arrays:
            plan.arrays[name if not result.passes else result.passes[0]["name"]] = result.arrays
        plan.tables.extend(t.to_json() for t in [result.table, *result.extra_tables])
    return plan


def _rows(batch) -> int:
    first = next(iter(batch.values()))
    return int(first.shape[0]) if first.ndim else 1


def _calibration_source(bundle: ModelBundle, path: Path | str | None) -> str:
    if path is not None:
        return f"{'npz' if str(path).endswith('.npz') else 'polygraphy-json'}:{path}"
    return bundle.task.calibration_source() if bundle.task is not None else "generated"


def _versions() -> dict[str, str]:
    import onnx
    import torch

    return {"mlpdeploy": __version__, "torch": torch.__version__, "onnx": onnx.__version__}
