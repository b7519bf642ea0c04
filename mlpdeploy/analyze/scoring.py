"""What a planner scores a change of the torch model by: the task metric on fixed batches, or,
for a model without a task (or labels), how far its first output drifts from the original's.

`Scorer(module) -> value` runs the model on its batches; `degradation(value)` says how much
worse that is than the original model's value, in the metric's units (positive = worse), and
`allowed(budget)` turns a budget into those units (a relative budget is a fraction of the
original's value). The calibration scorer uses the task's train split; the held-out scorer its
eval split, which planners re-check their combined choice on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mlpdeploy.model.bundle import ModelBundle
from mlpdeploy.model.torch_run import first_output_fn, run_module

WORSE_WHEN = {"perplexity": 1.0, "accuracy": -1.0, "agreement": -1.0, "cosine": -1.0, "output drift": 1.0}
DRIFT = "output drift"  # relative RMS error of the first output against the original model's


@dataclass
class Budget:
    """A quality budget: `max_delta` in the metric's units, or a fraction of its value (`relative`)."""

    max_delta: float
    relative: bool = False

    def to_json(self, metric: str) -> dict:
        return {"metric": metric, "max_delta": self.max_delta, "relative": self.relative}


@dataclass
class Scorer:
    """The metric of `bundle`'s module on fixed `batches` (inputs, plus labels for a task)."""

    bundle: ModelBundle
    batches: list[dict[str, np.ndarray]]
    use_task: bool
    baseline: float = float("nan")
    _reference: list[np.ndarray] = field(default_factory=list, repr=False)

    def __post_init__(self):
        if not self.use_task:  # drift is measured against the original outputs
            self._reference = [self._first(b) for b in self.batches]
        self.baseline = self(self.bundle.module)

    @property
    def metric(self) -> str:
        return self.bundle.task.metric if self.use_task else DRIFT

    @property
    def samples(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.batches)

    def _first(self, batch) -> np.ndarray:
        names = [s.name for s in self.bundle.inputs]
        return run_module(self.bundle.module, {k: v for k, v in batch.items() if k in names}, names)[0]

    def __call__(self, module: torch.nn.Module) -> float:
        names = [s.name for s in self.bundle.inputs]
        if self.use_task:
            return float(self.bundle.task.evaluate_batches(first_output_fn(module, names), iter(self.batches))["value"])
        num = den = 0.0
        for batch, ref in zip(self.batches, self._reference):
            out = run_module(module, batch, names)[0].astype(np.float64)
            num += float(((out - ref) ** 2).sum())
            den += float((ref.astype(np.float64) ** 2).sum())
        return (num / den) ** 0.5 if den else 0.0

    def degradation(self, value: float) -> float:
        return WORSE_WHEN.get(self.metric, 1.0) * (value - self.baseline)

    def allowed(self, budget: Budget) -> float:
        return budget.max_delta * abs(self.baseline) if budget.relative and self.metric != DRIFT else budget.max_delta


def calibration_scorer(bundle: ModelBundle, batches: list[dict[str, np.ndarray]], seed: int, from_task: bool) -> Scorer:
    """The task metric on the labeled calibration samples (the same rows as `batches`), else drift on `batches`."""
    if from_task and bundle.task is not None:
        labeled = list(bundle.task.labeled_calibration_batches(len(batches), len(next(iter(batches[0].values()))), seed))
        return Scorer(bundle, labeled, use_task=True)
    return Scorer(bundle, batches, use_task=False)


def heldout_scorer(bundle: ModelBundle, samples: int, fallback: list[dict[str, np.ndarray]]) -> Scorer:
    """The task metric on the first `samples` eval samples (held out from calibration), else drift on `fallback`."""
    if bundle.task is not None:
        return Scorer(bundle, list(bundle.task.eval_batches(16, samples)), use_task=True)
    return Scorer(bundle, fallback, use_task=False)
