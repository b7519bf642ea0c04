"""What planners judge a change of the torch model by, and how they share one quality budget.

`Scorer(module) -> value` runs the model on fixed batches: the task metric on the task's held-out
(eval) split, or, for a model without a task, how far its first output drifts from the original
model's on calibration-like batches. `degradation(value)` says how much worse that is than the
original's value in the metric's units (positive = worse).

`Ledger`: one budget for every planner of an `analyze` run. Planners run one after another
(drop-layers, then sparse-mlp, then quantize-weights), each on the model with the earlier
planners' edits in force, and each measures on the same held-out samples. A planner may spend
`share` of what the earlier ones left (`available`): every planner but the last half of it, the
last all of it. What each planner commits is measured, so the ledger's `value` is the held-out
metric of the whole plan so far: the plan's prediction, which `compile --plan` reproduces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ContextManager

import numpy as np
import torch

from mlpdeploy.model.bundle import ModelBundle
from mlpdeploy.model.torch_run import first_output_fn, run_module

WORSE_WHEN = {"perplexity": 1.0, "accuracy": -1.0, "cosine": -1.0, "agreement": -1.0, "output drift": 1.0}
DRIFT = "output drift"  # relative RMS error of the first output against the original model's
BATCH_TOKENS = 1024  # held-out LM windows per batch: this many tokens (logits of a 49k vocabulary stay ~200 MB)
Edit = Callable[[torch.nn.Module], ContextManager]  # applies a planned change to the torch model for a `with` block


def worse_by(metric: str, delta: float) -> float:
    """How much worse a metric got (positive = worse) given candidate − reference."""
    return WORSE_WHEN.get(metric, 1.0) * delta


@dataclass
class Budget:
    """A quality budget: `max_delta` in the metric's units, or a fraction of its value (`relative`)."""

    max_delta: float
    relative: bool = False

    def to_json(self, metric: str) -> dict:
        return {"metric": metric, "max_delta": self.max_delta, "relative": self.relative}

    def allowed(self, baseline: float, metric: str) -> float:
        """The degradation it allows, in the metric's units."""
        return self.max_delta * abs(baseline) if self.relative and metric != DRIFT else self.max_delta

    def text(self, metric: str) -> str:
        return f"{self.max_delta:.3%} of the {metric}" if self.relative else f"{self.max_delta:g} {metric}"


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
        return worse_by(self.metric, value - self.baseline)

    def allowed(self, budget: Budget) -> float:
        return budget.allowed(self.baseline, self.metric)


def eval_batch_size(bundle: ModelBundle) -> int:
    """Held-out samples per batch: BATCH_TOKENS tokens of an LM task's windows, else 16."""
    seq_len = getattr(bundle.task, "seq_len", None)
    return max(1, BATCH_TOKENS // seq_len) if seq_len else 16


def heldout_scorer(bundle: ModelBundle, samples: int | None, fallback: list[dict[str, np.ndarray]]) -> Scorer:
    """The task metric on the first `samples` eval samples (held out from calibration), else drift on `fallback`."""
    if bundle.task is not None:
        return Scorer(bundle, list(bundle.task.eval_batches(eval_batch_size(bundle), samples)), use_task=True)
    return Scorer(bundle, fallback, use_task=False)


@dataclass
class Ledger:
    """One budget shared by the planners of a run (see the module docstring)."""

    scorer: Scorer  # held-out
    budget: Budget
    edits: list[tuple[str, Edit]] = field(default_factory=list)  # (planner, edit), in order
    value: float = float("nan")  # the held-out metric with every committed edit in force
    spent_by: dict[str, float] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)  # module paths dropped by a planner (nothing left there to plan)

    def __post_init__(self):
        self.value = self.scorer.baseline

    @property
    def metric(self) -> str:
        return self.scorer.metric

    @property
    def baseline(self) -> float:
        return self.scorer.baseline

    @property
    def allowed(self) -> float:
        """The degradation the whole plan may cost (metric units)."""
        return self.scorer.allowed(self.budget)

    @property
    def spent(self) -> float:
        return self.scorer.degradation(self.value)

    def available(self, share: float = 1.0) -> float:
        """What a planner may spend: `share` of what is left."""
        return max(0.0, self.allowed - self.spent) * share

    def limit(self, share: float = 1.0) -> float:
        """The worst metric value a planner with `share` may reach."""
        return self.value + WORSE_WHEN.get(self.metric, 1.0) * self.available(share)

    @contextlib.contextmanager
    def applied(self, module: torch.nn.Module, *extra: Edit) -> Iterator[None]:
        """Every committed edit (and `extra`) in force on `module` inside the block."""
        with contextlib.ExitStack() as stack:
            for _, edit in self.edits:
                stack.enter_context(edit(module))
            for edit in extra:
                stack.enter_context(edit(module))
            yield

    def measure(self, module: torch.nn.Module, *extra: Edit) -> float:
        """The held-out metric with the committed edits and `extra` in force."""
        with torch.no_grad(), self.applied(module, *extra):
            return self.scorer(module)

    def commit(self, planner: str, edit: Edit | None, value: float) -> None:
        """Record a planner's edit and the held-out metric measured with it (and all before it)."""
        if edit is not None:
            self.edits.append((planner, edit))
        self.spent_by[planner] = self.scorer.degradation(value) - self.spent
        self.value = value

    def predicted(self) -> dict:
        """plan.json's `predicted`: the whole plan's held-out metric, measured in torch."""
        delta = self.value - self.baseline
        return {"metric": self.metric, "reference": self.baseline, "value": self.value, "metric_delta": delta,
                "relative_delta": delta / self.baseline if self.baseline else None, "heldout_samples": self.scorer.samples,
                "allowed_degradation": self.allowed, "spent_by": dict(self.spent_by)}
