"""The sparse-mlp planner: the sparsest uniform level whose task metric fits the budget.

A level applies to every MLP at once: for ReLU-style MLPs a predictor recall (each MLP's k is the
smallest whose recall on held-out calibration tokens reaches it), for gated MLPs a target
sparsity (each MLP's threshold is that quantile of its |act(gate)|). Levels are tried from the
sparsest up; each try runs the torch model with every MLP computing only its selected neurons
(mlpdeploy.model.sparsity: the function the `sparse-mlp` graph computes, each token selecting on
its own) on the first `eval_samples` samples of the held-out eval split, and the first that fits
the budget is planned (sparser levels cost more quality; a level is not tried once one fits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mlpdeploy.analyze.base import AnalysisContext
from mlpdeploy.analyze.drop_planner import budget_limit, budget_text
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.sparsity import SparseSite, sparsified
from mlpdeploy.model.torch_run import first_output_fn
from mlpdeploy.validate.task import degradation

# (predictor recall, gated sparsity), sparsest first.
LEVELS: tuple[tuple[float, float], ...] = ((0.9, 0.7), (0.95, 0.6), (0.98, 0.5), (0.99, 0.4), (0.995, 0.3), (0.999, 0.2))


@dataclass
class PlannedSparsity:
    metric: str
    baseline: float
    budget: float
    relative: bool
    samples: int
    limit: float
    steps: list[dict] = field(default_factory=list)
    chosen: int | None = None  # index into LEVELS

    def to_json(self) -> dict:
        chosen = self.steps[-1] if self.chosen is not None else None
        return {"metric": self.metric, "baseline": self.baseline, "budget": self.budget, "relative": self.relative,
                "budget_text": budget_text(self.budget, self.relative, self.metric), "limit": self.limit,
                "samples": self.samples, "steps": self.steps, "chosen": chosen}


def plan_sparsity(ctx: AnalysisContext, sites_at: Callable[[int], list[SparseSite]], computed_at: Callable[[int], float]) -> PlannedSparsity:
    """Try LEVELS in order; `sites_at(i)` gives the sites of level i, `computed_at(i)` the mean share of neurons computed."""
    bundle = ctx.bundle
    task = bundle.task
    if task is None:
        raise MlpdeployError(
            f"{bundle.source} has no evaluation task, so --max-metric-delta cannot judge sparsity; give it --data FILE (docs/data.md), or run --sparsity without it "
            "for the measurements, and choose k or thresholds with `--pass sparse-mlp:...`"
        )
    run = first_output_fn(bundle.module, ctx.input_names)
    base = task.evaluate(run, limit=ctx.eval_samples)
    allowed, limit = budget_limit(ctx, task.metric, base["value"])
    plan = PlannedSparsity(task.metric, base["value"], ctx.max_metric_delta, ctx.relative_budget, base["samples"], limit)
    for i, (recall, sparsity) in enumerate(LEVELS):
        with sparsified(bundle.module, sites_at(i)):
            value = task.evaluate(run, limit=ctx.eval_samples)["value"]
        worse = degradation(task.metric, value - base["value"])
        accepted = worse <= allowed
        plan.steps.append({"level": i, "recall": recall, "sparsity": sparsity, "computed_fraction": computed_at(i),
                           "metric": value, "degradation": worse, "accepted": accepted})
        if accepted:
            plan.chosen = i
            break
    return plan
