"""`--quant FORMATS`: how much each linear layer suffers from each 4-bit format, one at a time.

For every nn.Linear of the model (attention projections, MLP projections, the LM head) and
every format of `--quant` (nvfp4, mxfp4, int4, int4-64, int4asym-128, ... see
`mlpdeploy.quant.parse_format`), the layer's weight alone is replaced by what its codes decode
to and the calibration batches are run again:

* `delta` — the task metric's degradation on the calibration samples (train split: perplexity
  up, accuracy down; for a model without a task, the relative RMS drift of its output);
* `output_error` — the layer's own relative RMS output error ‖x·Wq − x·W‖ / ‖x·W‖ on its inputs.

With a budget (`--max-metric-delta`, metric units or a percentage) the planner (`quant_planner`)
picks the layers and formats and the plan gets a `quantize-weights` pass with those sites.
Tables: the per-layer measurements (and a layer × format heat map of the relative delta, drawn
in report.html), and the plan.
"""

from __future__ import annotations

import torch
from torch import nn

from mlpdeploy.analyze.base import Analysis, AnalysisContext, AnalysisResult, Table
from mlpdeploy.analyze.quant_planner import plan_quantization
from mlpdeploy.analyze.scoring import Budget, calibration_scorer, heldout_scorer
from mlpdeploy.backends import get_backend
from mlpdeploy.contract import WEIGHT_BLOCKS, WEIGHT_FORMATS
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.calibration import calibration_batches
from mlpdeploy.model.hooks import first_tensor, observe
from mlpdeploy.quant import Format, parse_format, quantized_linears


class QuantSensitivity(Analysis):
    name = "quant"
    takes = "FORMATS"
    description = (f"per linear layer and 4-bit format ({','.join(WEIGHT_FORMATS)}; int4 and int4asym take a block "
                   f"{'|'.join(f'-{b}' for b in WEIGHT_BLOCKS['int4'])}): task-metric delta and output error; with a budget, a quantization plan")

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        formats = _formats(self.value)
        budget = _budget(ctx)
        backend = get_backend(ctx.backend)
        usable = [f for f in formats if f.name not in backend.refused_weight_formats]  # what the planner may choose
        if budget is not None and not usable:
            raise MlpdeployError(f"--backend {ctx.backend} builds none of --quant {','.join(map(str, formats))}; "
                                 f"plan for it with formats other than {', '.join(backend.refused_weight_formats)}")
        module = ctx.bundle.module
        linears = [path for path, m in module.named_modules() if isinstance(m, nn.Linear) and m.weight.numel()]
        if not linears:
            raise MlpdeployError(f"{ctx.bundle.source}: has no nn.Linear layers; --quant measures linear weights")
        scorer = calibration_scorer(ctx.bundle, ctx.batches, ctx.seed, ctx.labeled)
        layers = {}
        for path in linears:
            weight = dict(module.named_modules())[path].weight
            layers[path] = {"shape": [int(weight.shape[1]), int(weight.shape[0])], "formats": {}}
            for fmt in formats:
                value, error = self._measure(ctx, scorer, path, fmt)
                layers[path]["formats"][str(fmt)] = {"metric": value, "delta": scorer.degradation(value), "output_error": error}
        data = {"metric": scorer.metric, "calibration_baseline": scorer.baseline, "calibration_samples": scorer.samples,
                "formats": [str(f) for f in formats], "layers": layers}
        tables = [_sensitivity_table(data)]
        passes, predicted = [], {}
        if budget is not None:
            fallback = calibration_batches(ctx.bundle, n=len(ctx.batches), batch_size=8, seed=ctx.seed + 1, path=ctx.calibration)
            heldout = heldout_scorer(ctx.bundle, ctx.eval_samples, fallback)
            plan = plan_quantization(module, data, usable, budget, scorer, heldout, backend.pass_target)
            data["plan"] = plan.to_json()
            passes, predicted = [plan.pass_entry()], plan.predicted()
            tables.append(plan.table())
        return AnalysisResult(data=data, table=tables[0], passes=passes, predicted=predicted, extra_tables=tables[1:])

    @staticmethod
    def _measure(ctx: AnalysisContext, scorer, path: str, fmt: Format) -> tuple[float, float]:
        """(metric with only `path` quantized, that layer's relative RMS output error)."""
        module = ctx.bundle.module
        linear = dict(module.named_modules())[path]
        original = linear.weight.detach().clone()
        sums = [0.0, 0.0]

        def record(_path, inputs, output) -> None:
            x, y = first_tensor(inputs), first_tensor(output)
            exact = nn.functional.linear(x, original, linear.bias)
            sums[0] += float(((y - exact).double() ** 2).sum())
            sums[1] += float((exact.double() ** 2).sum())

        with torch.no_grad(), quantized_linears(module, {path: fmt}), observe(module, [path], record):
            value = scorer(module)
        return value, (sums[0] / sums[1]) ** 0.5 if sums[1] else 0.0


def _formats(value: str | None) -> list[Format]:
    specs = [s for s in (value or "").split(",") if s.strip()]
    if not specs:
        raise MlpdeployError("--quant needs a comma-separated list of formats, e.g. --quant nvfp4,mxfp4,int4")
    formats = list(dict.fromkeys(parse_format(s) for s in specs))
    return formats


def _budget(ctx: AnalysisContext) -> Budget | None:
    return None if ctx.max_metric_delta is None else Budget(ctx.max_metric_delta, relative=ctx.relative_budget)


def _sensitivity_table(data: dict) -> Table:
    formats, metric = data["formats"], data["metric"]
    base = data["calibration_baseline"]
    columns = ["layer", "[in, out]"] + [f"Δ{metric} {f}" for f in formats] + [f"out err {f}" for f in formats]
    rows, values = [], []
    for path, layer in data["layers"].items():
        cells = layer["formats"]
        rows.append([path, "×".join(map(str, layer["shape"]))] + [f"{cells[f]['delta']:+.4g}" for f in formats]
                    + [f"{cells[f]['output_error']:.3g}" for f in formats])
        values.append([cells[f]["delta"] / abs(base) if base else cells[f]["delta"] for f in formats])
    heatmap = {"rows": list(data["layers"]), "columns": formats, "values": values,
               "label": f"relative {metric} degradation with that layer alone quantized (calibration data)"}
    title = f"Quantization sensitivity, one linear at a time ({metric} {base:.4g} on {data['calibration_samples']} calibration samples)"
    return Table(title, columns, rows, heatmap=heatmap)
