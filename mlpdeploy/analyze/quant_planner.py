"""The quantization planner: which linears to quantize, in which format and at which MatMulNBits
accuracy level, for the fewest bytes within a quality budget.

1. **Level, per site.** For INT4 on ONNX Runtime the faster kernel (level 4, int8 activations) is
   chosen where the proxy says int8 activations add at most `LEVEL_TOLERANCE` to that layer's
   own loss growth at level 0; elsewhere level 0 (float activations). Judged on the data, per site.
2. **A path of plans.** Each linear's options (its formats, and float32) have a byte cost and a
   proxy loss growth (`fisher`). Minimizing `bytes + λ·growth` layer by layer gives, as λ grows
   from 0 to ∞, a path from the smallest plan (every layer in its smallest format) to the float
   model: each step moves one layer to its next option on its lower convex hull, the cheapest
   bytes per unit of growth first. Along the path the predicted growth (the layers' sum) falls.
3. **Held-out checks.** The budget is judged on the held-out samples, with the quantized weights
   (and int8 inputs at level 4, as MatMulNBits computes them) and every earlier planner's edits
   in force. The first probe is the smallest plan the proxy predicts fits (for perplexity the
   growth of mean log-likelihood maps to a perplexity ratio; other metrics start mid-path); each
   probe rescales the proxy by measured / predicted and the next probe is the plan the rescaled
   proxy says fits, bracketed by the probes so far (bisection when the proxy has nothing to say),
   at most `MAX_PROBES` probes, and none once the smallest plan that could still fit would save
   less than `STOP_GAIN` of the bytes. The plan is the smallest probe that fit the budget less
   `MARGIN` (kept for what separates this torch check from ONNX Runtime's arithmetic).

The plan's pass leaves `target=auto`: compile writes the forms of its `--backend`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from mlpdeploy.analyze.base import Table
from mlpdeploy.analyze.quant_choices import FLOAT32, Choice
from mlpdeploy.analyze.scoring import Ledger
from mlpdeploy.quant import quantized_linears

MARGIN = 0.05  # of the budget, kept for the built graph's own arithmetic
LEVEL_TOLERANCE = 0.10  # level 4 where int8 activations add at most this to the layer's own growth
MAX_PROBES = 8
STOP_GAIN = 0.01  # no further probe when the smallest plan that could still fit saves less than this share of the bytes


@dataclass(frozen=True)
class Option:
    choice: Choice
    bytes: int
    growth: float


def level_choice(options: list[Option]) -> list[Option]:
    """Per format, level 4 where its growth is within LEVEL_TOLERANCE of level 0's, else level 0."""
    by_format: dict = {}
    for o in options:
        by_format.setdefault(o.choice.format, []).append(o)
    kept = []
    for group in by_format.values():
        levels = {o.choice.level: o for o in group}
        if 0 in levels and 4 in levels:
            fast, exact = levels[4], levels[0]
            kept.append(fast if fast.growth <= exact.growth * (1 + LEVEL_TOLERANCE) else exact)
        else:
            kept.extend(group)
    return kept


def lower_hull(options: list[Option]) -> list[Option]:
    """The options on the lower convex hull of (bytes, growth), fewest bytes first: the only ones
    `bytes + λ·growth` picks for some λ ≥ 0."""
    points = sorted(options, key=lambda o: (o.bytes, o.growth))
    frontier: list[Option] = []
    for o in points:  # drop the dominated (more bytes, no less growth)
        if not frontier or o.growth < frontier[-1].growth:
            frontier.append(o)
    hull: list[Option] = []
    for o in frontier:
        while len(hull) >= 2 and _price(hull[-2], hull[-1]) >= _price(hull[-1], o):
            hull.pop()
        hull.append(o)
    return hull


def _price(a: Option, b: Option) -> float:
    """Bytes paid per unit of growth removed moving from a to b (b: more bytes, less growth)."""
    return (b.bytes - a.bytes) / (a.growth - b.growth) if a.growth > b.growth else math.inf


def plan_path(hulls: dict[str, list[Option]]) -> list[dict[str, Option]]:
    """The plans along λ (see the module docstring), smallest first, float last."""
    events = sorted((_price(h[i], h[i + 1]), path, i + 1) for path, h in hulls.items() for i in range(len(h) - 1))
    current = {path: h[0] for path, h in hulls.items()}
    plans = [dict(current)]
    for _, path, i in events:
        current[path] = hulls[path][i]
        plans.append(dict(current))
    return plans


@dataclass
class QuantPlan:
    metric: str
    baseline: float  # held-out metric before this planner (earlier edits in force)
    value: float  # held-out metric with the plan
    samples: int
    allowed: float  # the degradation this planner could spend, less the margin
    choices: dict[str, Choice]  # quantized layers -> their choice
    target: str
    shapes: dict[str, list[int]]
    predicted_growth: float
    probes: list[dict] = field(default_factory=list)
    path_length: int = 0

    def weight_bytes(self) -> tuple[int, int]:
        """(bytes of every linear weight after the plan, as float32 before)."""
        after = before = 0
        for path, (k, n) in self.shapes.items():
            before += 4 * k * n
            after += self.choices.get(path, FLOAT32).bytes(k, n, self.target)
        return after, before

    def summary(self) -> dict:
        after, before = self.weight_bytes()
        weights = sum(k * n for k, n in self.shapes.values())
        levels = [c.level for c in self.choices.values()]
        return {
            "quantized_layers": len(self.choices), "linear_layers": len(self.shapes), "level_4_layers": levels.count(4),
            "level_0_layers": levels.count(0), "linear_weight_bytes": after, "float32_linear_weight_bytes": before,
            "compression": before / after if after else None, "bits_per_weight": 8 * after / weights if weights else None,
            "target": self.target, "value": self.value, "baseline": self.baseline,
        }

    def pass_entry(self) -> dict:
        return {"name": "quantize-weights", "options": {"target": "auto"}, "sites": {p: c.site() for p, c in self.choices.items()}}

    def to_json(self) -> dict:
        return {"allowed_degradation": self.allowed, "predicted_growth": self.predicted_growth, "path_length": self.path_length,
                "choices": {p: str(c) for p, c in self.choices.items()}, "probes": self.probes, "summary": self.summary()}

    def table(self) -> Table:
        s = self.summary()
        rows = []
        for path, (k, n) in self.shapes.items():
            choice = self.choices.get(path, FLOAT32)
            rows.append([path, str(choice), f"{8 * choice.bytes(k, n, self.target) / (k * n):.3f}"])
        rows.append(["all linears", f"{s['quantized_layers']}/{s['linear_layers']} quantized ({s['level_4_layers']} at level 4)",
                     f"{s['bits_per_weight']:.3f} (×{s['compression']:.2f} smaller: {s['linear_weight_bytes']:,} B)"])
        title = (f"Quantization plan: held-out {self.metric} {self.baseline:.5g} → {self.value:.5g} on {self.samples} samples "
                 f"({len(self.probes)} held-out checks along a path of {self.path_length} plans)")
        return Table(title, ["layer", "choice", f"stored bits/weight ({self.target})"], rows)


def plan_quantization(module: nn.Module, options: dict[str, list[Option]], shapes: dict[str, list[int]], ledger: Ledger,
                      share: float, target: str) -> QuantPlan:
    """The smallest plan along the λ-path whose held-out degradation fits `share` of the ledger's budget."""
    hulls = {path: lower_hull(level_choice(opts) + [Option(FLOAT32, 4 * shapes[path][0] * shapes[path][1], 0.0)])
             for path, opts in options.items()}
    plans = plan_path(hulls)
    growth = [sum(o.growth for o in plan.values()) for plan in plans]
    start = ledger.value
    allowed = ledger.available(share) * (1 - MARGIN)
    sign = 1.0 if ledger.metric not in ("accuracy", "cosine", "agreement") else -1.0
    probes: list[dict] = []
    measured: dict[int, float] = {len(plans) - 1: start}  # the float plan changes nothing

    def fits(i: int) -> bool:
        return sign * (measured[i] - start) <= allowed

    def probe(i: int) -> None:
        chosen = _quantized(plans[i])
        int8 = {p: c.format.block for p, c in chosen.items() if c.int8_activations}
        measured[i] = ledger.measure(module, lambda m: quantized_linears(m, {p: c.format for p, c in chosen.items()}, int8))
        after = sum(o.bytes for o in plans[i].values())
        probes.append({"index": i, "quantized_layers": len(chosen), "linear_weight_bytes": after, "predicted_growth": growth[i],
                       "value": measured[i], "degradation": sign * (measured[i] - start), "fits": fits(i)})

    good, bad = len(plans) - 1, -1  # indices: good fits (measured), bad does not
    target_growth = _growth_target(ledger.metric, start, allowed)
    size = [sum(o.bytes for o in plan.values()) for plan in plans]
    scale = 1.0
    for _ in range(MAX_PROBES):
        if good - bad <= 1 or (good < len(plans) - 1 and size[good] - size[bad + 1] < STOP_GAIN * size[good]):
            break
        i = _next_probe(growth, bad, good, None if target_growth is None else target_growth / scale)
        probe(i)
        if fits(i):
            good = i
        else:
            bad = i
        observed = _observed_growth(ledger.metric, start, measured[i])
        if observed is not None and growth[i] > 0 and observed > 0:
            scale = observed / growth[i]
    chosen = _quantized(plans[good])
    return QuantPlan(ledger.metric, start, measured[good], ledger.scorer.samples, allowed, chosen, target, shapes, growth[good],
                     probes, len(plans))


def _quantized(plan: dict[str, Option]) -> dict[str, Choice]:
    return {p: o.choice for p, o in plan.items() if o.choice.format is not None}


def _growth_target(metric: str, start: float, allowed: float) -> float | None:
    """The mean-loss growth the budget allows: for perplexity log(1 + allowed / start); None otherwise."""
    if metric == "perplexity" and start > 0:
        return math.log1p(allowed / start)
    return None


def _observed_growth(metric: str, start: float, value: float) -> float | None:
    if metric == "perplexity" and start > 0 and value > 0:
        return math.log(value / start)
    return None


def _next_probe(growth: list[float], bad: int, good: int, target: float | None) -> int:
    """Inside (bad, good): the first plan whose growth is within `target` (the smallest the proxy
    says fits), else the midpoint."""
    mid = (bad + good) // 2
    if target is None:
        return mid
    guess = next((i for i in range(bad + 1, good) if growth[i] <= target), mid)
    edge = (good - bad) // 32  # each probe cuts at least 1/32 of the bracket
    return min(max(guess, bad + 1 + edge), good - 1 - edge)
