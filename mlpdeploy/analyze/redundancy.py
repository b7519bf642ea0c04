"""`--redundancy`: how much each attention sublayer, MLP sublayer and whole block changes the
residual stream (LLM-Drop, "What Matters in Transformers? Not All Attention is Needed").

Score of a sublayer F: `1 − cos(X, X + F(LN(X)))` per token, averaged over every calibration
token, where X is the residual stream entering it (a block's input, then that plus each branch
before it); of a block: `1 − cos(X, block(X))`. Near 0: the part barely turns the stream, and
dropping it (`drop-layers`) should cost little. Pre-norm blocks (LLaMA, OPT, ViT, Mistral,
Qwen2) are recognized by `output = input + Σ branches`; in a post-norm block (BERT:
`LN(X + F(X))`) X is what the branch reads and `X + F(X)` what the following LayerNorm
normalizes, so the score measures the branch's turn of the stream before that LayerNorm, and
dropping it leaves `LN(X)`, not X.

With `--max-metric-delta`, the planner (`drop_planner.py`) drops the lowest-scored parts greedily
while the task metric on held-out eval samples stays within budget, and puts a `drop-layers`
pass with those sites in the plan.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from mlpdeploy.analyze.base import Analysis, AnalysisContext, AnalysisResult, Table
from mlpdeploy.analyze.drop_planner import drop_estimates, plan_drops
from mlpdeploy.analyze.fisher import proxy_batches
from mlpdeploy.analyze.sublayers import Sublayer, find_sublayers
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.hooks import first_tensor, observe
from mlpdeploy.model.overrides import overridden
from mlpdeploy.model.torch_run import run_module


def cosine_distance_sum(x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """(Σ over tokens of 1 − cos(x, y), number of tokens), vectors along the last dim."""
    x, y = x.reshape(-1, x.shape[-1]).double(), y.reshape(-1, y.shape[-1]).double()
    cos = torch.nn.functional.cosine_similarity(x, y, dim=-1, eps=1e-12)
    return float((1 - cos).sum()), x.shape[0]


def _aligned(branch: torch.Tensor, stream: torch.Tensor) -> torch.Tensor | None:
    """The branch output laid out like the stream (Mixer's token MLP works transposed), or None."""
    if branch.shape == stream.shape:
        return branch
    if branch.dim() >= 2 and branch.transpose(-1, -2).shape == stream.shape:
        return branch.transpose(-1, -2)
    return None


def measure_scores(module: torch.nn.Module, sublayers: list[Sublayer], batches, input_names) -> tuple[dict[str, dict], dict[str, str]]:
    """(site → {"score", "tokens"}, block → "pre-norm" | "post-norm" | why it could not be scored)."""
    sums: dict[str, list] = defaultdict(lambda: [0.0, 0])
    norms: dict[str, str] = {}
    by_block: dict[str, list[Sublayer]] = defaultdict(list)
    for s in sublayers:
        by_block[s.block].append(s)
    paths = {p for s in sublayers for p in (s.block, s.output_module, s.first_module) if p}
    for feed in batches:
        seen, order = _capture(module, paths, feed, input_names)
        for block, parts in by_block.items():
            norms[block] = _score_block(block, parts, seen, order, sums) or norms.get(block, "")
    scores = {s.site: {"score": sums[s.site][0] / sums[s.site][1] if sums[s.site][1] else None, "tokens": sums[s.site][1]} for s in sublayers}
    return scores, norms


def _capture(module: torch.nn.Module, paths: set[str], feed, input_names) -> tuple[dict[str, tuple], list[str]]:
    """(path → (its first input, its output), the order the modules ran in) for one forward."""
    seen: dict[str, tuple] = {}
    order: list[str] = []

    def record(path: str, inputs: tuple, output) -> None:
        seen[path] = (first_tensor(inputs), first_tensor(output))
        order.append(path)

    with observe(module, paths, record):
        run_module(module, feed, input_names)
    return seen, order


def _score_block(block: str, parts: list[Sublayer], seen: dict, order: list[str], sums) -> str | None:
    """Add this batch's cosine distances of `block` and its branches to `sums`; its norm placement."""
    if block not in seen or any(p.output_module not in seen for p in parts):
        return "not run on the calibration data"
    x0, out = (t.detach() for t in seen[block])
    branches = sorted((p for p in parts if p.kind != "block"), key=lambda p: order.index(p.output_module))
    ys = [_aligned(seen[p.output_module][1].detach(), x0) for p in branches]
    if out is None or out.shape != x0.shape or any(y is None for y in ys):
        return "a branch or the block output is not shaped like the stream"
    pre_norm = torch.allclose(x0 + sum(ys), out, rtol=1e-4, atol=1e-5 * float(out.abs().max()))
    stream = x0
    for part, y in zip(branches, ys):
        x = stream if pre_norm else seen[part.first_module][0].detach()
        if x.shape != y.shape:
            return f"{part.site} reads a stream shaped {list(x.shape)}, unlike its output {list(y.shape)}"
        _add(sums[part.site], cosine_distance_sum(x, x + y))
        stream = stream + y
    _add(sums[block], cosine_distance_sum(x0, out))
    return "pre-norm" if pre_norm else "post-norm"


def _add(acc: list, item: tuple[float, int]) -> None:
    acc[0] += item[0]
    acc[1] += item[1]


class Redundancy(Analysis):
    plans = True
    name = "redundancy"
    description = ("LLM-Drop importance 1 − cos(X, X + F(LN(X))) of every attention sublayer, MLP sublayer and block; "
                   "with --max-metric-delta, plans drop-layers greedily within budget")

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        module = ctx.bundle.module
        sublayers = find_sublayers(module)
        if not sublayers:
            raise MlpdeployError(
                f"{ctx.bundle.source}: found no residual blocks (children of an nn.ModuleList holding an attention "
                "module or an MLP); redundancy needs a transformer-style stack"
            )
        batches, labeled = proxy_batches(ctx)  # a language model's first PROXY_TOKENS calibration tokens
        scores, norms = measure_scores(module, sublayers, batches, ctx.input_names)
        data = {"scores": {s.site: {"kind": s.kind, "block": s.block, "depth": s.depth, "output_module": s.output_module,
                                    **scores[s.site]} for s in sublayers},
                "norm": norms}
        result = AnalysisResult(data=data, table=Table("", [], []))
        if ctx.ledger is not None:
            candidates = [s for s in sublayers if scores[s.site]["score"] is not None]
            estimates = drop_estimates(ctx, candidates, batches, labeled)
            for site, estimate in estimates.items():
                data["scores"][site]["loss_growth_estimate"] = estimate
            planned = plan_drops(ctx, candidates, scores, estimates)
            data["planner"] = planned.to_json()
            edit = None
            if planned.dropped:
                sites = {s.site: {"kind": s.kind, "score": scores[s.site]["score"]} for s in planned.dropped}
                result.passes.append({"name": "drop-layers", "options": {}, "sites": sites})
                overrides = {k: v for part in planned.dropped for k, v in part.override.items()}
                edit = lambda module: overridden(module, overrides)  # noqa: E731
                ctx.ledger.removed.update(s.site for s in planned.dropped)
            ctx.ledger.commit(self.name, edit, planned.final)
            result.predicted = {"drops": {"dropped_sublayers": len(planned.dropped), "value": planned.final}}
        result.table = _table(sublayers, scores, data.get("planner"))
        return result


def _table(sublayers: list[Sublayer], scores: dict, planner: dict | None) -> Table:
    ranked = sorted((s for s in sublayers if scores[s.site]["score"] is not None), key=lambda s: scores[s.site]["score"])
    rank = {s.site: i + 1 for i, s in enumerate(ranked)}
    tried = {step["site"]: step for step in (planner or {}).get("steps", [])}
    rows = []
    for s in sublayers:
        score = scores[s.site]["score"]
        row = [s.depth, s.site, s.kind, "-" if score is None else f"{score:.4g}", rank.get(s.site, "-")]
        if planner is not None:
            step = tried.get(s.site)
            if step is None:
                row += ["-", "-"]
            elif not step.get("tried", True):
                row += [f"est. +{step['estimate']:.3g} nats", "keep (estimate)"]
            else:
                row += [f"{step['metric']:.5g}", "drop" if step["accepted"] else "keep"]
        rows.append(row)
    columns = ["depth", "site", "kind", "1 − cos", "rank"]
    title = "Redundancy by depth: LLM-Drop score 1 − cos(X, X + F(X)), mean over calibration tokens (low = redundant)"
    chart = None
    if planner is not None:
        columns += [f"{planner['metric']} when tried", "planned"]
        title += (f"; greedy drops within its share of {planner['budget_text']} on {planner['samples']} held-out samples "
                  "(tried where the second-order estimate allows)")
        chart = _curve(planner)
    return Table(title, columns, rows, chart=chart)


def _curve(planner: dict) -> dict:
    """Metric vs number of dropped parts along the greedy path: accepted steps, and the tries that broke the budget."""
    points = [[0, planner["baseline"], True]]
    count = 0
    for step in (s for s in planner["steps"] if s.get("tried", True)):
        x = count + step["adds"]
        points.append([x, step["metric"], step["accepted"]])
        if step["accepted"]:
            count = x
    return {"x": "sublayers dropped (a block counts as its sublayers)", "y": planner["metric"], "points": points,
            "limit": planner["limit"]}
