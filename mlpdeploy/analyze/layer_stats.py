"""`--layer-stats`: per MLP, what flows through it on calibration data.

For each MLP (see `mlps.find_mlps`): RMS of its input (what the up projection reads) and of
its output (what the down projection writes), the fraction of hidden activations above zero
(the down projection's input: after a ReLU this is the share of neurons that fire; after a
gated product, the share of positive products), the hidden width and the bytes its
projections' weights and biases take. Measures, proposes no rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mlpdeploy.analyze.base import Analysis, AnalysisContext, AnalysisResult, Table
from mlpdeploy.analyze.mlps import MLPSite, find_mlps
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.hooks import first_tensor, observe
from mlpdeploy.model.torch_run import run_module


@dataclass
class _Sums:
    """Running sums for one MLP over every calibration token."""

    in_squares: float = 0.0
    in_count: int = 0
    out_squares: float = 0.0
    out_count: int = 0
    positive: int = 0
    hidden_count: int = 0
    tokens: int = 0

    def add_input(self, x: torch.Tensor) -> None:
        x = x.double()
        self.in_squares += float((x * x).sum())
        self.in_count += x.numel()
        self.tokens += x.numel() // max(1, x.shape[-1])

    def add_down(self, hidden: torch.Tensor, out: torch.Tensor) -> None:
        out = out.double()
        self.out_squares += float((out * out).sum())
        self.out_count += out.numel()
        self.positive += int((hidden > 0).sum())
        self.hidden_count += hidden.numel()


class LayerStats(Analysis):
    name = "layer-stats"
    description = "per MLP: input/output RMS, fraction of hidden activations > 0, hidden width, weight bytes"

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        module = ctx.bundle.module
        sites = find_mlps(module)
        if not sites:
            raise MlpdeployError(
                f"{ctx.bundle.source}: found no MLPs (pairs of nn.Linear projections named like gate_proj/up_proj → down_proj, "
                "fc1 → fc2, w1/w3 → w2, ...); layer statistics need one"
            )
        sums = {site.scope: _Sums() for site in sites}
        by_linear = {site.ups[0]: (site.scope, "up") for site in sites} | {site.down: (site.scope, "down") for site in sites}

        def record(path: str, inputs: tuple, output) -> None:
            scope, role = by_linear[path]
            x, y = first_tensor(inputs), first_tensor(output)
            if role == "up":
                sums[scope].add_input(x.detach())
            else:
                sums[scope].add_down(x.detach(), y.detach())

        with observe(module, list(by_linear), record):
            for feed in ctx.batches:
                run_module(module, feed, ctx.input_names)
        data = {site.scope: self._stats(module, site, sums[site.scope]) for site in sites}
        return AnalysisResult(data=data, table=self._table(data))

    @staticmethod
    def _stats(module: torch.nn.Module, site: MLPSite, s: _Sums) -> dict:
        modules = dict(module.named_modules())
        weight_bytes = sum(p.numel() * p.element_size() for path in site.linears for p in modules[path].parameters())
        return {
            "ups": list(site.ups),
            "down": site.down,
            "gated": site.gated,
            "hidden": site.hidden,
            "tokens": s.tokens,
            "input_rms": (s.in_squares / s.in_count) ** 0.5 if s.in_count else None,
            "output_rms": (s.out_squares / s.out_count) ** 0.5 if s.out_count else None,
            "active_fraction": s.positive / s.hidden_count if s.hidden_count else None,
            "weight_bytes": weight_bytes,
        }

    @staticmethod
    def _table(data: dict) -> Table:
        rows = [
            [scope, "gated" if d["gated"] else "plain", d["hidden"], d["tokens"], _num(d["input_rms"]), _num(d["output_rms"]),
             _pct(d["active_fraction"]), d["weight_bytes"]]
            for scope, d in data.items()
        ]
        columns = ["MLP", "kind", "hidden", "tokens", "input RMS", "output RMS", "active > 0", "weight bytes"]
        return Table("MLP layer statistics (calibration data)", columns, rows)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
