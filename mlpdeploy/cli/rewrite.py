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
    from mlpdeploy.passes import rewrite_model, spec_text

    passes, plan = PASSES.parse(kwargs)
    result = rewrite_model(onnx_model, output, passes_with_plan(plan, passes, onnx_model))
    for report in result.passes:
        console.print(f"{spec_text(report)}: rewrote {report['rewritten']} site(s)", markup=False)
        for site, reason in report.get("skipped", {}).items():
            console.print(f"  skipped {site}: {reason}", markup=False)
    console.print(f"wrote {output} in {result.seconds:.2f} s", markup=False)


@cli.command()
@click.option("--markdown", is_flag=True, help="Print docs/passes.md (the same facts as a Markdown reference).")
@debug_option
def passes(markdown: bool, debug: bool) -> None:
    """List the registered rewrite passes: phase, typed options (type = default (allowed): help), description."""
    from mlpdeploy.passes import PHASES, available_passes, pass_class, passes_markdown

    if markdown:
        click.echo(passes_markdown(), nl=False)
        return
    table = Table(title=f"rewrite passes (phases run in order: {' → '.join(PHASES)})")
    for col in ("name", "phase", "options", "description"):
        table.add_column(col)
    for name in available_passes():
        cls = pass_class(name)
        options = "\n".join(f"{key}: {option.describe()}" for key, option in cls.options.items()) or "-"
        table.add_row(name, cls.phase, options, cls.description)
    console.print(table, markup=False)
