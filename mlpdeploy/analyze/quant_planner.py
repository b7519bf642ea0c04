"""The quantization planner: which linears to quantize, and how, within a quality budget.

1. Each layer's format is the cheapest — fewest bytes as `quantize-weights` stores it for the
   plan's build target (`analyze --backend`: on ONNX Runtime INT4 is a 4-bit MatMulNBits with
   float32 scales while FP4 formats become exact 8-bit re-encodings; on TensorRT each format
   keeps its own bits) — whose degradation on the calibration samples, that layer alone
   quantized, fits the budget; a layer none fits stays float.
2. Layers are ordered least sensitive first (their degradation at that format; more weight bytes first on ties).
3. The combined effect is re-checked on held-out samples (the task's eval split, never the
   calibration samples): the longest prefix of that order whose held-out degradation fits the
   budget less a 5% margin is kept (all of them if they fit, else a binary search — degradation
   grows with the set in practice, and each probe is one evaluation). The margin covers what
   separates this torch check from the built graph's arithmetic (float32 summation order, and
   int8 activation codes that land on the other side of a rounding boundary).

The held-out check runs the torch model with the quantized weights and, since ONNX Runtime's
MatMulNBits computes with int8 activations at the pass's default accuracy level 4, with those
emulated (`mlpdeploy.quant.int8_blocks`); TensorRT forms compute with float activations. The plan's pass leaves `target=auto`: compile writes
the forms of its `--backend`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from mlpdeploy.analyze.base import Table
from mlpdeploy.analyze.scoring import Budget, Scorer
from mlpdeploy.passes.quantize_weights import DEFAULT_ACCURACY_LEVEL, planned_bytes
from mlpdeploy.quant import Format, quantized_linears

MARGIN = 0.05  # of the budget, kept for the built graph's own arithmetic


@dataclass
class QuantPlan:
    metric: str
    budget: Budget
    heldout_baseline: float
    heldout_value: float
    heldout_samples: int
    allowed_heldout: float
    choices: dict[str, Format]  # layer -> chosen format, least sensitive first
    target: str = "ort"  # the build target the bytes are counted for (ort | trt)
    kept: dict[str, str] = field(default_factory=dict)  # layer -> why it stays float
    shapes: dict[str, list[int]] = field(default_factory=dict)
    probes: list[dict] = field(default_factory=list)  # held-out checks: {"layers": k, "delta": ...}

    @property
    def delta(self) -> float:
        return self.heldout_value - self.heldout_baseline

    def weight_bytes(self) -> tuple[int, int]:
        """(bytes of every linear weight after the plan, as float32 before)."""
        after = before = 0
        for path, (k, n) in self.shapes.items():
            before += 4 * k * n
            after += planned_bytes(self.choices[path], k, n, self.target) if path in self.choices else 4 * k * n
        return after, before

    def predicted(self) -> dict:
        after, before = self.weight_bytes()
        weights = sum(k * n for k, n in self.shapes.values())
        return {
            "metric": self.metric, "reference": self.heldout_baseline, "value": self.heldout_value, "metric_delta": self.delta,
            "relative_delta": self.delta / self.heldout_baseline if self.heldout_baseline else None,
            "heldout_samples": self.heldout_samples, "quantized_layers": len(self.choices), "linear_layers": len(self.shapes),
            "linear_weight_bytes": after, "float32_linear_weight_bytes": before, "compression": before / after if after else None,
            "bits_per_weight": 8 * after / weights if weights else None, "target": self.target,
        }

    def pass_entry(self) -> dict:
        return {"name": "quantize-weights", "options": {"target": "auto", "accuracy_level": DEFAULT_ACCURACY_LEVEL},
                "sites": {path: {"format": str(fmt)} for path, fmt in self.choices.items()}}

    def to_json(self) -> dict:
        return {"budget": self.budget.to_json(self.metric), "allowed_heldout_delta": self.allowed_heldout,
                "choices": {p: str(f) for p, f in self.choices.items()}, "kept": self.kept, "probes": self.probes,
                "predicted": self.predicted()}

    def table(self) -> Table:
        p = self.predicted()
        rows = [[path, str(fmt), f"{8 * planned_bytes(fmt, *self.shapes[path], self.target) / (self.shapes[path][0] * self.shapes[path][1]):.3f}"]
                for path, fmt in self.choices.items()]
        rows += [[path, "float32", f"32 ({why})"] for path, why in self.kept.items()]
        rows.append(["all linears", f"{p['quantized_layers']}/{p['linear_layers']} quantized",
                     f"{p['bits_per_weight']:.3f} (×{p['compression']:.2f} smaller: {p['linear_weight_bytes']:,} B)"])
        unit = f"{self.budget.max_delta:.3g}" + (" relative" if self.budget.relative else f" {self.metric}")
        title = (f"Quantization plan (budget {unit}): held-out {self.metric} {self.heldout_baseline:.4g} → {self.heldout_value:.4g} "
                 f"({self.delta:+.4g}) on {self.heldout_samples} eval samples")
        return Table(title, ["layer", "format", f"stored bits/weight ({self.target})"], rows)


def plan_quantization(module: nn.Module, data: dict, formats: list[Format], budget: Budget, calibration: Scorer, heldout: Scorer,
                      target: str = "ort") -> QuantPlan:
    """Choose layers and formats from the sensitivity `data` (see quant_sensitivity) within `budget`."""
    allowed_cal = calibration.allowed(budget)
    shapes = {path: layer["shape"] for path, layer in data["layers"].items()}
    choices: dict[str, tuple[Format, float]] = {}
    kept: dict[str, str] = {}
    for path, layer in data["layers"].items():
        k, n = layer["shape"]
        fitting = [(planned_bytes(f, k, n, target), layer["formats"][str(f)]["delta"], f) for f in formats
                   if layer["formats"][str(f)]["delta"] <= allowed_cal]
        if not fitting:
            best = min(formats, key=lambda f: layer["formats"][str(f)]["delta"])
            kept[path] = f"alone, {best} costs {layer['formats'][str(best)]['delta']:+.3g} > {allowed_cal:.3g} on calibration data"
            continue
        _, delta, fmt = min(fitting, key=lambda t: (t[0], t[1]))
        choices[path] = (fmt, delta)
    order = sorted(choices, key=lambda p: (choices[p][1], -shapes[p][0] * shapes[p][1]))
    allowed_ho = heldout.allowed(budget) * (1 - MARGIN)
    probes: list[dict] = []

    def heldout_delta(count: int) -> float:
        sites = {p: choices[p][0] for p in order[:count]}
        int8 = {p: f.block for p, f in sites.items()} if target == "ort" and DEFAULT_ACCURACY_LEVEL == 4 else None
        with quantized_linears(module, sites, int8):
            value = heldout(module)
        probes.append({"layers": count, "value": value, "delta": heldout.degradation(value)})
        return heldout.degradation(value)

    keep = len(order)
    if keep and heldout_delta(keep) > allowed_ho:
        lo, hi = 0, keep  # lo fits (no layers), hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if heldout_delta(mid) <= allowed_ho:
                lo = mid
            else:
                hi = mid
        keep = lo
        for path in order[keep:]:
            kept[path] = "left float by the held-out check of the combined plan"
    chosen = {p: choices[p][0] for p in order[:keep]}
    final = next((pr for pr in reversed(probes) if pr["layers"] == keep), None)
    value = final["value"] if final else heldout.baseline
    return QuantPlan(heldout.metric, budget, heldout.baseline, value, heldout.samples, allowed_ho, chosen, target, kept, shapes, probes)
