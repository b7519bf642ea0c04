"""`--quant FORMATS`: how much each linear layer would cost the task in each format, from one
forward and backward pass, and with a budget a quantization plan checked on held-out data.

For every nn.Linear (attention and MLP projections, the LM head) and every choice the formats
give on the plan's backend (`quant_choices`: on ONNX Runtime INT4 at accuracy levels 0 and 4,
FP4 as 8-bit MatMulNBits at level 4), the proxy (`fisher`) estimates on the calibration samples:

* `loss_growth` — the expected growth of the mean task loss with that layer alone quantized
  (for perplexity: Δ log ppl, so 0.01 ≈ 1% more perplexity);
* `output_error` — the layer's own relative RMS output error |x·Wq − x·W| / |x·W|.

The proxy reads the first `PROXY_TOKENS` calibration tokens (LM windows; every calibration
sample for other models). With `--max-metric-delta` int8 joins the choices (the mixed-precision
fallback, `quant_choices.FALLBACK`) and the planner (`quant_planner`) spends what
the budget leaves after the other planners on the fewest bytes, checking its choice on the
held-out samples; the plan gets a `quantize-weights` pass with per-site formats and accuracy
levels. Tables: per layer and choice (a heat map of the loss growth in report.html), and the plan.
"""

from __future__ import annotations

import time

from torch import nn

from mlpdeploy.analyze.base import Analysis, AnalysisContext, AnalysisResult, Table
from mlpdeploy.analyze.fisher import PROXY_TOKENS, estimate_changes, objective, proxy_batches
from mlpdeploy.analyze.quant_choices import FALLBACK, Choice, choices_for, output_changes
from mlpdeploy.analyze.quant_planner import Option, plan_quantization
from mlpdeploy.backends import get_backend
from mlpdeploy.contract import WEIGHT_BLOCKS, WEIGHT_FORMATS
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.quant import Format, parse_format, quantized_linears


class QuantSensitivity(Analysis):
    name = "quant"
    takes = "FORMATS"
    description = (f"per linear layer and weight format ({','.join(WEIGHT_FORMATS)}; int4 and int4asym take a block "
                   f"{'|'.join(f'-{b}' for b in WEIGHT_BLOCKS['int4'])}, int8 {'|'.join(f'-{b}' for b in WEIGHT_BLOCKS['int8'])}) "
                   "and accuracy level: estimated task-loss growth and output error; with a budget, a mixed-precision plan checked on held-out data")
    plans = True

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        formats = _formats(self.value)
        backend = get_backend(ctx.backend)
        usable = [f for f in formats if f.name not in backend.refused_weight_formats]  # what the planner may choose
        if ctx.ledger is not None and not usable:
            raise MlpdeployError(f"--backend {ctx.backend} builds none of --quant {','.join(map(str, formats))}; "
                                 f"plan for it with formats other than {', '.join(backend.refused_weight_formats)}")
        module = ctx.bundle.module
        modules = dict(module.named_modules())
        removed = ctx.ledger.removed if ctx.ledger is not None else set()
        linears = [path for path, m in modules.items() if isinstance(m, nn.Linear) and m.weight.numel()
                   and not any(path == r or path.startswith(r + ".") for r in removed)]  # not inside a dropped sublayer
        if not linears:
            raise MlpdeployError(f"{ctx.bundle.source}: has no nn.Linear layers; --quant measures linear weights")
        target = backend.pass_target
        fallback = parse_format(FALLBACK)
        planning = formats + ([fallback] if ctx.ledger is not None and fallback not in formats and fallback.name not in
                              backend.refused_weight_formats else [])
        choices = choices_for(planning, target)
        batches, labeled = proxy_batches(ctx)
        goal = objective(ctx.bundle, batches, labeled, ctx.seed)
        start = time.perf_counter()
        with ctx.applied():  # earlier planners' edits in force: measure what is left to quantize
            changes = {path: output_changes(modules[path], choices, path) for path in linears}
            stats = estimate_changes(module, goal, ctx.input_names, changes)
        layers = {}
        for path in linears:
            out_f, in_f = modules[path].weight.shape
            layers[path] = {"shape": [int(in_f), int(out_f)], "choices": {
                str(c): {**stats[path][str(c)].to_json(), "bytes": c.bytes(int(in_f), int(out_f), target)} for c in choices}}
        data = {"metric": ctx.bundle.task.metric if ctx.bundle.task is not None else "output drift", "objective": goal.name,
                "proxy": {"runs": len(goal.runs), "loss_terms": sum(goal.terms), "max_tokens": PROXY_TOKENS,
                          "seconds": round(time.perf_counter() - start, 1)},
                "formats": [str(f) for f in formats], "fallback": [str(f) for f in planning if f not in formats],
                "choices": [str(c) for c in choices], "target": target, "layers": layers}
        tables = [_sensitivity_table(data)]
        result = AnalysisResult(data=data, table=tables[0])
        if ctx.ledger is not None:
            planned = [c for c in choices if c.format in usable or c.format == fallback]
            options = {path: [Option(c, layers[path]["choices"][str(c)]["bytes"], layers[path]["choices"][str(c)]["loss_growth"])
                              for c in planned] for path in linears}
            plan = plan_quantization(module, options, {p: layers[p]["shape"] for p in linears}, ctx.ledger, ctx.share, target)
            data["plan"] = plan.to_json()
            if plan.choices:
                result.passes = [plan.pass_entry()]
                ctx.ledger.commit(self.name, _edit(plan.choices), plan.value)
            else:
                ctx.ledger.commit(self.name, None, plan.value)
            result.predicted = {"quantization": plan.summary()}
            result.extra_tables = [plan.table()]
        return result


def _edit(choices: dict[str, Choice]):
    sites = {p: c.format for p, c in choices.items()}
    int8 = {p: c.format.block for p, c in choices.items() if c.int8_activations}
    return lambda module: quantized_linears(module, sites, int8)


def _formats(value: str | None) -> list[Format]:
    specs = [s for s in (value or "").split(",") if s.strip()]
    if not specs:
        raise MlpdeployError("--quant needs a comma-separated list of formats, e.g. --quant nvfp4,mxfp4,int4")
    return list(dict.fromkeys(parse_format(s) for s in specs))


def _sensitivity_table(data: dict) -> Table:
    choices = data["choices"]
    columns = ["layer", "[in, out]"] + [f"loss growth {c}" for c in choices] + [f"out err {c}" for c in choices]
    rows, values = [], []
    for path, layer in data["layers"].items():
        cells = layer["choices"]
        rows.append([path, "×".join(map(str, layer["shape"]))] + [f"{cells[c]['loss_growth']:.3g}" for c in choices]
                    + [f"{cells[c]['output_error']:.3g}" for c in choices])
        values.append([cells[c]["loss_growth"] for c in choices])
    heatmap = {"rows": list(data["layers"]), "columns": choices, "values": values,
               "label": f"estimated growth of the mean {data['objective']} loss with that layer alone quantized (calibration data)"}
    title = (f"Quantization sensitivity, one linear at a time: second-order {data['objective']} proxy on "
             f"{data['proxy']['loss_terms']} calibration loss terms ({data['proxy']['seconds']} s)")
    return Table(title, columns, rows, heatmap=heatmap)
