"""`mlpdeploy compile`."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from mlpdeploy.cli.app import cli, console, debug_option
from mlpdeploy.cli.options import BUILD, DATA, KV_CACHE, PASSES, SEED, TOLERANCES, task_options
from mlpdeploy.cli.tables import failure, print_validation, stages_table
from mlpdeploy.contract import DEFAULT_OPSET

TASK = task_options(default_samples=128)


@cli.command(name="compile")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output directory.")
@PASSES
@BUILD
@TOLERANCES
@click.option("--opset", default=DEFAULT_OPSET, show_default=True, help="ONNX opset to export with.")
@KV_CACHE
@SEED
@DATA
@TASK
@debug_option
def compile_cmd(model, output, opset, kv_cache, seed, debug, **kwargs) -> None:
    """Export, rewrite, build and validate MODEL; write artifacts and report.json/html to OUTPUT."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from mlpdeploy.compile import CompileOptions, compile_model

    passes, plan = PASSES.parse(kwargs)
    backend, build_options = BUILD.parse(kwargs)
    options = CompileOptions(passes=passes, plan=plan, backend=backend, build=build_options, opset=opset, seed=seed, debug=debug, kv_cache=kv_cache,
                             data=DATA.parse(kwargs), **TOLERANCES.parse(kwargs), **TASK.parse(kwargs))
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=False) as progress:
        tasks = {}

        def on_stage(stage: str, event: str, seconds: float | None) -> None:
            if event == "start":
                tasks[stage] = progress.add_task(f"{stage} …", total=1)
            else:
                progress.update(tasks[stage], completed=1, description=f"{stage} [dim]({seconds:.2f} s)[/]")

        report = compile_model(model, output, options, on_stage=on_stage)
    val = report["validation"]
    console.print(stages_table(report["stages"], report.get("memory")))
    print_validation(console, val, f"{report['model']}: validation")
    console.print(f"report: {report['artifacts']['report_json']} and {report['artifacts']['report_html']}", markup=False)
    console.print("[green]PASS[/]" if report["passed"] else f"[red]FAIL: {escape(failure(val))}[/]")
    sys.exit(0 if report["passed"] else 1)
