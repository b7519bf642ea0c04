"""The drop planner: as many sublayers as its share of the quality budget allows, greedy by
redundancy score, screened by the second-order proxy so that held-out checks go where a drop
can fit.

Candidates (attention sublayers, MLP sublayers and whole blocks) are taken from the lowest
LLM-Drop score up. For each, the proxy (`fisher`: the output change of dropping it is `−y` for a
branch, `x − y` for a block) estimates the growth of the mean loss; for a perplexity budget a
candidate whose estimate, added to the accepted drops', exceeds `SCREEN` times what the budget
allows is passed over without a held-out check (the proxy is a second-order estimate and large
changes break it, hence the factor). Other candidates are tried: the candidate together with
everything accepted so far (a block replaces its sublayers) is dropped in the torch model
(module overrides, `mlpdeploy.model.overrides`: the function the `drop-layers` graph computes),
with earlier planners' edits in force, and the task metric measured on the held-out samples;
the try is kept when the degradation fits this planner's share of the budget. At most
`MAX_TRIES` held-out checks are made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlpdeploy.analyze.base import AnalysisContext
from mlpdeploy.analyze.fisher import estimate_changes, objective
from mlpdeploy.analyze.sublayers import Sublayer
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.overrides import overridden

SCREEN = 3.0  # a candidate is tried when its proxy estimate is within this factor of what is allowed
MAX_TRIES = 12


@dataclass
class PlannedDrops:
    metric: str
    baseline: float
    budget_text: str
    samples: int
    limit: float  # the worst metric this planner's share allows
    allowed: float
    dropped: list[Sublayer] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    final: float | None = None

    @property
    def degradation(self) -> float:
        sign = -1.0 if self.limit < self.baseline else 1.0
        return sign * ((self.final if self.final is not None else self.baseline) - self.baseline)

    def to_json(self) -> dict:
        return {
            "metric": self.metric, "baseline": self.baseline, "final": self.final, "degradation": self.degradation,
            "budget_text": self.budget_text, "allowed": self.allowed, "limit": self.limit, "samples": self.samples,
            "dropped": [s.site for s in self.dropped], "steps": self.steps,
        }


def drop_estimates(ctx: AnalysisContext, candidates: list[Sublayer], batches, labeled) -> dict[str, float]:
    """Proxy growth of the mean loss for dropping each candidate alone."""

    def change(kind: str):
        return (lambda x, y: -y) if kind != "block" else (lambda x, y: x - y)

    changes = {}
    for c in candidates:
        changes.setdefault(c.output_module, {})[c.site] = change(c.kind)
    goal = objective(ctx.bundle, batches, labeled, ctx.seed)
    with ctx.applied():
        stats = estimate_changes(ctx.bundle.module, goal, ctx.input_names, changes)
    return {c.site: stats[c.output_module][c.site].loss_growth() for c in candidates}


def plan_drops(ctx: AnalysisContext, candidates: list[Sublayer], scores: dict[str, dict], estimates: dict[str, float]) -> PlannedDrops:
    """Greedy drops within `ctx.share` of what the ledger's budget leaves (see the module docstring)."""
    bundle, ledger = ctx.bundle, ctx.ledger
    if bundle.task is None or not ledger.scorer.use_task:
        raise MlpdeployError(
            f"{bundle.source} has no evaluation task, so --max-metric-delta cannot judge drops; give it --data FILE (docs/data.md), or "
            "run --redundancy without a budget for the scores and choose sites with `--pass drop-layers:scopes=...`"
        )
    start = ledger.value
    allowed = ledger.available(ctx.share)
    plan = PlannedDrops(ledger.metric, start, ledger.budget.text(ledger.metric), ledger.scorer.samples, ledger.limit(ctx.share), allowed,
                        final=start)
    growth_allowed = math.log1p(allowed / start) if ledger.metric == "perplexity" and start > 0 else None
    children = {s.block: [c for c in candidates if c.block == s.block and c.kind != "block"] for s in candidates if s.kind == "block"}
    tries = 0
    for candidate in sorted(candidates, key=lambda s: scores[s.site]["score"]):
        if any(d.kind == "block" and d.block == candidate.block for d in plan.dropped):
            continue  # already gone with its block
        replaced = [d for d in plan.dropped if candidate.kind == "block" and d.block == candidate.block]
        trial = [d for d in plan.dropped if d not in replaced] + [candidate]
        estimate = sum(estimates.get(d.site, 0.0) for d in trial)
        step = {"site": candidate.site, "kind": candidate.kind, "score": scores[candidate.site]["score"], "estimate": estimate,
                "adds": len(children.get(candidate.site, [])) - len(replaced) if candidate.kind == "block" else 1}
        if growth_allowed is not None and estimate > SCREEN * growth_allowed:
            plan.steps.append({**step, "tried": False, "accepted": False})
            continue
        if tries >= MAX_TRIES:
            break
        tries += 1
        overrides = {k: v for part in trial for k, v in part.override.items()}
        value = ledger.measure(bundle.module, lambda m, o=overrides: overridden(m, o))
        worse = ledger.scorer.degradation(value) - ledger.scorer.degradation(start)
        accepted = worse <= allowed
        plan.steps.append({**step, "tried": True, "metric": value, "degradation": worse, "accepted": accepted})
        if accepted:
            plan.dropped, plan.final = trial, value
    return plan
