"""`mlpdeploy analyze`: one flag per registered analysis (`--layer-stats`, ...)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from mlpdeploy.analyze.registry import ANALYSES
from mlpdeploy.backends import BACKENDS
from mlpdeploy.cli.app import cli, console, debug_option
from mlpdeploy.cli.options import DATA, METRIC_DELTA, SEED, metric_delta


def _analysis_options(fn):
    """A flag per analysis: `--NAME` (or `--NAME VALUE` when the analysis takes one)."""
    for name in reversed(ANALYSES.names()):
        cls = ANALYSES.load(name)
        dest = "analysis_" + name.replace("-", "_")
        if cls.takes is None:
            fn = click.option(f"--{name}", dest, is_flag=True, help=cls.description)(fn)
        else:
            fn = click.option(f"--{name}", dest, metavar=cls.takes, help=cls.description)(fn)
    return fn


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write plan.json.")
@_analysis_options
@DATA
@click.option("--calibration", type=click.Path(path_type=Path),
              help="Calibration inputs only: .npz or Polygraphy inputs JSON (default: the task's calibration split, else generated).")
@SEED
@click.option("--max-metric-delta", type=METRIC_DELTA,
              help="Quality budget for planners: task metric units (perplexity up, accuracy down), or a percentage of the model's metric with % (e.g. 1%).")
@click.option("--task-samples", type=int, default=128, show_default=True,
              help="Held-out eval samples planners judge their choices on (0: the whole eval split).")
@click.option("--backend", default="onnxruntime", show_default=True,
              help=f"The build backend the plan is for, what its choices cost there ({', '.join(BACKENDS.names())}).")
@debug_option
def analyze(model, output, calibration, seed, max_metric_delta, task_samples, backend, debug, **kwargs) -> None:
    """Measure MODEL on calibration data and write the findings (and any planned rewrites) to plan.json."""
    from mlpdeploy.analyze import AnalyzeOptions, analyze_model

    chosen = {name: kwargs[f"analysis_{name.replace('-', '_')}"] for name in ANALYSES.names()}
    chosen = {name: (None if value is True else value) for name, value in chosen.items() if value not in (None, False)}
    budget = metric_delta(max_metric_delta)
    data = DATA.parse(kwargs)
    options = AnalyzeOptions(chosen, calibration=calibration, samples=data.samples, data=data, seed=seed, max_metric_delta=budget["max_metric_delta"],
                             relative_budget=budget["relative_metric_delta"], eval_samples=task_samples or None, backend=backend)
    with console.status(f"analyzing {model}") as status:
        plan = analyze_model(model, options, on_analysis=lambda name: status.update(f"analyzing {model}: {name}"))
        plan.save(output)
    for table in plan.tables:
        rich_table = Table(title=table["title"])
        for i, col in enumerate(table["columns"]):
            rich_table.add_column(col, no_wrap=i == 0, justify="left" if i == 0 else "right")
        for row in table["rows"]:
            rich_table.add_row(*map(str, row))
        console.print(rich_table)
    console.print(f"plan: {output} ({len(plan.passes)} planned pass(es), calibration {plan.calibration['samples']} samples "
                  f"from {plan.calibration['source']})", markup=False)
