"""`mlpdeploy rewrite` and `mlpdeploy passes`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from mlpdeploy.cli.app import cli, console, debug_option
from mlpdeploy.cli.options import PASSES


@cli.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the rewritten .onnx file.")
@PASSES
@debug_option
def rewrite(onnx_model: Path, output: Path, debug: bool, **kwargs) -> None:
    """Run rewrite passes (a plan's, then --pass ones) on an ONNX model."""
    from mlpdeploy.analyze.plan import passes_with_plan
    from mlpdeploy.passes import rewrite_model

    passes, plan = PASSES.parse(kwargs)
    result = rewrite_model(onnx_model, output, passes_with_plan(plan, passes, onnx_model))
    for spec, report in result.passes.items():
        console.print(f"{spec}: rewrote {report['rewritten']} site(s)", markup=False)
        for site, reason in report.get("skipped", {}).items():
            console.print(f"  skipped {site}: {reason}", markup=False)
    console.print(f"wrote {output} in {result.seconds:.2f} s", markup=False)


@cli.command()
@debug_option
def passes(debug: bool) -> None:
    """List the registered rewrite passes and their options."""
    from mlpdeploy.passes import available_passes, pass_class

    table = Table(title="rewrite passes")
    for col in ("name", "options", "description"):
        table.add_column(col)
    for name in available_passes():
        cls = pass_class(name)
        table.add_row(name, ", ".join(f"{k}={v}" for k, v in cls.options.items()) or "-", cls.description)
    console.print(table)
