"""The drop planner: as many sublayers as the quality budget allows, greedy by redundancy score.

Candidates (attention sublayers, MLP sublayers and whole blocks) are tried from the lowest score
up. Each try drops the candidate together with everything accepted so far (a block replaces
its sublayers) in the torch model (module overrides, mlpdeploy.model.overrides: the same
function the `drop-layers` graph computes) and measures the task metric on the first
`eval_samples` samples of the held-out eval split (calibration reads the train split); the try
is kept when the combined degradation fits the budget, in the metric's units or, with a
relative budget, as a fraction of the undropped model's metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlpdeploy.analyze.base import AnalysisContext
from mlpdeploy.analyze.sublayers import Sublayer
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.overrides import overridden
from mlpdeploy.model.torch_run import first_output_fn
from mlpdeploy.validate.task import degradation


@dataclass
class PlannedDrops:
    metric: str
    baseline: float
    budget: float
    relative: bool
    samples: int
    limit: float  # the worst metric the budget allows
    dropped: list[Sublayer] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    final: float | None = None

    @property
    def degradation(self) -> float:
        return degradation(self.metric, (self.final if self.final is not None else self.baseline) - self.baseline)

    def to_json(self) -> dict:
        return {
            "metric": self.metric, "baseline": self.baseline, "final": self.final, "degradation": self.degradation,
            "budget": self.budget, "relative": self.relative, "budget_text": budget_text(self.budget, self.relative, self.metric),
            "limit": self.limit, "samples": self.samples, "dropped": [s.site for s in self.dropped], "steps": self.steps,
        }


def budget_text(budget: float, relative: bool, metric: str) -> str:
    return f"{budget:.3%} of the {metric}" if relative else f"{budget:g} {metric}"


def budget_limit(ctx: AnalysisContext, metric: str, baseline: float) -> tuple[float, float]:
    """(the degradation the budget allows, the worst metric value it allows) from the baseline metric."""
    allowed = ctx.max_metric_delta * abs(baseline) if ctx.relative_budget else ctx.max_metric_delta
    return allowed, baseline + allowed * (1 if degradation(metric, 1.0) > 0 else -1)


def plan_drops(ctx: AnalysisContext, candidates: list[Sublayer], scores: dict[str, dict]) -> PlannedDrops:
    """Greedy drops within `ctx.max_metric_delta` (see the module docstring)."""
    bundle = ctx.bundle
    task = bundle.task
    if task is None:
        raise MlpdeployError(
            f"{bundle.source} has no evaluation task, so --max-metric-delta cannot judge drops; give it --data FILE (docs/data.md), or "
            "run --redundancy without it for the scores, and choose sites with `--pass drop-layers:scopes=...`"
        )
    run = first_output_fn(bundle.module, ctx.input_names)

    def evaluate(parts: list[Sublayer]) -> dict:
        overrides = {k: v for part in parts for k, v in part.override.items()}
        with overridden(bundle.module, overrides):
            return task.evaluate(run, limit=ctx.eval_samples)

    base = evaluate([])
    budget = ctx.max_metric_delta
    allowed, limit = budget_limit(ctx, task.metric, base["value"])
    plan = PlannedDrops(task.metric, base["value"], budget, ctx.relative_budget, base["samples"], limit, final=base["value"])
    children = {s.block: [c for c in candidates if c.block == s.block and c.kind != "block"] for s in candidates if s.kind == "block"}
    for candidate in sorted(candidates, key=lambda s: scores[s.site]["score"]):
        if any(d.kind == "block" and d.block == candidate.block for d in plan.dropped):
            continue  # already gone with its block
        replaced = [d for d in plan.dropped if candidate.kind == "block" and d.block == candidate.block]
        trial = [d for d in plan.dropped if d not in replaced] + [candidate]
        value = evaluate(trial)["value"]
        worse = degradation(task.metric, value - base["value"])
        accepted = worse <= allowed
        adds = len(children.get(candidate.site, [])) - len(replaced) if candidate.kind == "block" else 1
        plan.steps.append({"site": candidate.site, "kind": candidate.kind, "score": scores[candidate.site]["score"],
                           "metric": value, "degradation": worse, "accepted": accepted, "adds": adds})
        if accepted:
            plan.dropped, plan.final = trial, value
    return plan
