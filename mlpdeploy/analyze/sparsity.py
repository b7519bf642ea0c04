"""`--sparsity`: contextual sparsity of every MLP (Deja Vu, Polar Sparsity, CATS/TEAL), and with
`--max-metric-delta` a `sparse-mlp` plan.

Per MLP (found as for `--layer-stats`), on the calibration tokens:
- ReLU-style MLPs: the fraction of hidden neurons that fire (hidden > 0) per token, and the union
  of the firing sets over random groups of 1, 4 and 16 tokens (what a batch of that size must
  compute); a low-rank predictor d → r → h (r = d/8, analyze/predictor.py) trained on the first
  80% of the calibration sequences, its recall at k on the last 20% (held out), and the k each
  recall level needs (also for the untrained SVD predictor, for comparison).
- Gated MLPs: the thresholds on |act(gate)| (act: the MLP's activation module, else SiLU) that give
  40% and 50% sparsity per layer (CATS), and the union at 50% over groups of 1, 4, 16 tokens.
With a budget the planner (sparse_planner.py) picks one level for all MLPs; the plan gets a
`sparse-mlp` pass with per-site k (and predictors, saved beside plan.json) or thresholds.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from torch import nn

from mlpdeploy.analyze.base import Analysis, AnalysisContext, AnalysisResult, Table
from mlpdeploy.analyze.mlps import MLPSite, find_mlps
from mlpdeploy.analyze.predictor import k_for_recall, recall_curve, svd_predictor, train_predictor
from mlpdeploy.analyze.sparse_planner import LEVELS, plan_sparsity
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.hooks import first_tensor, observe
from mlpdeploy.model.sparsity import SparseSite, sparsified
from mlpdeploy.model.torch_run import run_module
from mlpdeploy.plugins.sparse_mlp.reference import activate

BATCHES = (1, 4, 16)
TARGETS = (0.4, 0.5)  # gated: sparsities whose thresholds the table shows
ACTIVATIONS = {nn.SiLU: "silu", nn.ReLU: "relu", nn.GELU: "gelu"}
HELD_OUT = 0.2


def capture(module: nn.Module, sites: list[MLPSite], ctx: AnalysisContext) -> dict[str, dict[str, list[torch.Tensor]]]:
    """Per MLP scope, per calibration batch: `x` (its input), `up` (its first up projection's output), `hidden` (the down's input)."""
    got: dict[str, dict[str, list]] = {s.scope: defaultdict(list) for s in sites}
    roles = {s.ups[0]: s.scope for s in sites} | {s.down: s.scope for s in sites}
    downs = {s.down for s in sites}

    def record(path: str, inputs: tuple, output) -> None:
        scope = roles[path]
        x = first_tensor(inputs).detach().float()
        if path in downs:
            got[scope]["hidden"].append(x.reshape(-1, x.shape[-1]))
        else:
            got[scope]["x"].append(x.reshape(-1, x.shape[-1]))
            y = first_tensor(output).detach().float()
            got[scope]["up"].append(y.reshape(-1, y.shape[-1]))

    with observe(module, list(roles), record):
        for feed in ctx.batches:
            run_module(module, feed, ctx.input_names)
    return got


def union_fraction(active: torch.Tensor, batch: int, seed: int) -> float:
    """Mean share of neurons active in at least one of `batch` random tokens."""
    t = active.shape[0] - active.shape[0] % batch
    if t == 0:
        return float("nan")
    order = torch.randperm(active.shape[0], generator=torch.Generator().manual_seed(seed))[:t]
    return float(active[order].reshape(t // batch, batch, -1).any(dim=1).float().mean())


def gate_activation(module: nn.Module, site: MLPSite) -> str:
    modules = dict(module.named_modules())
    scope = modules.get(site.scope, module) if site.scope else module
    for child in scope.children():
        for cls, name in ACTIVATIONS.items():
            if isinstance(child, cls):
                return "gelu_tanh" if name == "gelu" and getattr(child, "approximate", "none") == "tanh" else name
    return "silu"


class Sparsity(Analysis):
    plans = True
    name = "sparsity"
    description = ("per MLP: neurons active per token (ReLU) or |gate| thresholds for 40/50% sparsity (gated), union over "
                   "batches of 1/4/16, trained low-rank predictors with recall@k; with --max-metric-delta plans sparse-mlp")

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        module = ctx.bundle.module
        sites = [s for s in find_mlps(module) if not (s.gated and len(s.ups) < 2)]  # a fused gate_up cannot be thresholded apart
        if not sites:
            raise MlpdeployError(f"{ctx.bundle.source}: found no MLPs with separate up (and gate) projections to measure sparsity on")
        with ctx.applied():  # earlier planners' drops in force
            got = capture(module, sites, ctx)
        modules = dict(module.named_modules())
        data, makers, computed = {}, {}, {}
        for site in sites:
            parts = {k: torch.cat(v) for k, v in got[site.scope].items()}
            if not parts:
                continue
            if site.gated:
                data[site.scope], makers[site.scope], computed[site.scope] = self._gated(module, site, parts, ctx.seed)
            else:
                w_up = modules[site.ups[0]].weight.detach().float().numpy()
                data[site.scope], makers[site.scope], computed[site.scope] = self._plain(site, parts, w_up, ctx)
        result = AnalysisResult(data={"sites": data}, table=Table("", [], []))
        planner = None
        if ctx.ledger is not None:
            planner = plan_sparsity(ctx, lambda i: [makers[s](i)[0] for s in makers],
                                    lambda i: float(np.mean([computed[s](i) for s in computed])))
            result.data["planner"] = planner.to_json()
            edit = None
            if planner.chosen is not None:
                self._plan(result, makers, planner.chosen)
                chosen_sites = [makers[s](planner.chosen)[0] for s in makers]
                edit = lambda m: sparsified(m, chosen_sites)  # noqa: E731
            ctx.ledger.commit(self.name, edit, planner.final)
            result.predicted = {"sparsity": {"computed_fraction": planner.steps[-1]["computed_fraction"] if planner.chosen is not None else 1.0,
                                             "value": planner.final}}
        result.table = _table(data, result.data.get("planner"))
        return result

    @staticmethod
    def _plain(site: MLPSite, parts: dict, w_up: np.ndarray, ctx: AnalysisContext):
        x, active = parts["x"], parts["hidden"] > 0
        h, d = active.shape[1], x.shape[1]
        split = int(x.shape[0] * (1 - HELD_OUT))
        rank = max(4, d // 8)
        p_a, p_b = train_predictor(x[:split], active[:split], w_up, rank, seed=ctx.seed)
        curve = recall_curve(x[split:], active[split:], p_a, p_b)
        svd_curve = recall_curve(x[split:], active[split:], *svd_predictor(w_up, rank))
        levels = [r for r, _ in LEVELS]
        stats = {
            "kind": "relu", "hidden": h, "tokens": int(x.shape[0]), "held_out_tokens": int(x.shape[0] - split),
            "active_fraction": float(active.float().mean()),
            "union": {str(b): union_fraction(active, b, ctx.seed) for b in BATCHES},
            "predictor": {"rank": rank, "k_for_recall": {str(r): k_for_recall(curve, r) for r in levels},
                          "svd_k_for_recall": {str(r): k_for_recall(svd_curve, r) for r in levels},
                          "recall_at": {str(f): float(curve[max(1, round(f * h)) - 1]) for f in (0.05, 0.1, 0.2, 0.3)}},
        }

        def make(i: int):
            k = stats["predictor"]["k_for_recall"][str(levels[i])]
            settings = {"mode": "topk", "k": k, "rank": rank, "recall": levels[i], "k_for_recall": stats["predictor"]["k_for_recall"]}
            return SparseSite("topk", site.ups[0], site.down, k=k, p_a=p_a, p_b=p_b), settings

        return stats, make, lambda i: make(i)[0].k / h

    @staticmethod
    def _gated(module: nn.Module, site: MLPSite, parts: dict, seed: int):
        act = gate_activation(module, site)
        magnitude = activate(parts["up"], act).abs()
        sample = magnitude.flatten()[torch.randperm(magnitude.numel(), generator=torch.Generator().manual_seed(seed))[:1_000_000]]
        levels = sorted({s for _, s in LEVELS} | set(TARGETS))
        thresholds = {str(s): float(torch.quantile(sample, s)) for s in levels}
        stats = {
            "kind": "gated", "activation": act, "hidden": int(magnitude.shape[1]), "tokens": int(magnitude.shape[0]),
            "thresholds": thresholds,
            "union": {str(b): union_fraction(magnitude > thresholds["0.5"], b, seed) for b in BATCHES},
        }

        def make(i: int):
            t = thresholds[str(LEVELS[i][1])]
            return (SparseSite("threshold", site.ups[0], site.down, threshold=np.array([t], np.float32), activation=act),
                    {"mode": "threshold", "threshold": t, "sparsity": LEVELS[i][1], "activation": act})

        return stats, make, lambda i: 1 - LEVELS[i][1]

    @staticmethod
    def _plan(result: AnalysisResult, makers: dict, level: int) -> None:
        sites = {}
        for scope, make in makers.items():
            site, settings = make(level)
            sites[scope] = {**settings, "up": site.up, "down": site.down}
            if site.mode == "topk":
                result.arrays[f"{scope}.p_a"], result.arrays[f"{scope}.p_b"] = site.p_a, site.p_b
        result.passes.append({"name": "sparse-mlp", "options": {}, "sites": sites})


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{v:.1%}"


def _table(data: dict, planner: dict | None) -> Table:
    rows = []
    for scope, d in data.items():
        union = d["union"]
        if d["kind"] == "relu":
            p = d["predictor"]
            active = _pct(d["active_fraction"])
            thresholds = "-"
            predictor = f"r={p['rank']}: k={p['k_for_recall']['0.95']}/{p['k_for_recall']['0.99']} (SVD {p['svd_k_for_recall']['0.95']}/{p['svd_k_for_recall']['0.99']})"
        else:
            active = "-"
            thresholds = f"{d['thresholds']['0.4']:.3g} / {d['thresholds']['0.5']:.3g}"
            predictor = "-"
        rows.append([scope, d["kind"], d["hidden"], active, _pct(union["1"]), _pct(union["4"]), _pct(union["16"]), thresholds, predictor])
    columns = ["MLP", "kind", "hidden", "active/token", "union b1", "union b4", "union b16", "|gate| t @40%/50%",
               "predictor: k for recall .95/.99"]
    title = ("Contextual sparsity (calibration tokens; union = neurons a batch of that many tokens needs: ReLU active, "
             "gated above the 50% threshold; recall on held-out tokens)")
    chart = {"x": "MLP (depth)", "y": "share of neurons a batch of 4 tokens needs", "points": [
        [i, d["union"]["4"], True] for i, d in enumerate(data.values())]}
    if planner is not None:
        title += f"; planned within {planner['budget_text']} on {planner['samples']} held-out samples"
        chart = {"x": "share of neurons computed", "y": planner["metric"], "limit": planner["limit"],
                 "points": [[1.0, planner["baseline"], True]] + [[s["computed_fraction"], s["metric"], s["accepted"]] for s in planner["steps"]]}
        for s in planner["steps"]:
            rows.append([f"try level {s['level']}", f"recall {s['recall']}" if any(d["kind"] == "relu" for d in data.values()) else f"sparsity {s['sparsity']:.0%}",
                         "-", _pct(s["computed_fraction"]), "-", "-", "-", f"{planner['metric']} {s['metric']:.5g}",
                         "planned" if s["accepted"] else "over budget"])
    return Table(title, columns, rows, chart=chart)
