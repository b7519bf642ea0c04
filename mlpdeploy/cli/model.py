"""`mlpdeploy zoo` and `mlpdeploy export`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from mlpdeploy.cli.app import cli, console, debug_option
from mlpdeploy.cli.options import KV_CACHE
from mlpdeploy.contract import DEFAULT_OPSET


@cli.command()
@debug_option
def zoo(debug: bool) -> None:
    """List the built-in models: parameters, task and, for trained ones, their measured metric."""
    from mlpdeploy.model.zoo import ZOO

    table = Table(title="mlpdeploy zoo (metric on the task's eval split; baseline in brackets)")
    for col in ("name", "params", "task", "metric", "description"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for name, entry in ZOO.items():
        bundle = entry.build()
        table.add_row(name, f"{bundle.num_parameters:,}", bundle.task.name if bundle.task else "-", _metric_text(bundle.trained), entry.description)
    console.print(table)


def _metric_text(trained) -> str:
    if trained is None:
        return "untrained"
    fmt = "{:.1%}" if trained.metric == "accuracy" else "{:.3f}"
    text = f"{trained.metric} {fmt.format(trained.value)}"
    if trained.baseline is not None:
        text += f" ({fmt.format(trained.baseline)})"
    return text


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the .onnx file (a .manifest.json goes beside it).")
@click.option("--opset", default=DEFAULT_OPSET, show_default=True, help="ONNX opset to export with.")
@KV_CACHE
@debug_option
def export(model: str, output: Path, opset: int, kv_cache: bool, debug: bool) -> None:
    """Export MODEL to ONNX with dynamic dims and module scopes on nodes."""
    from mlpdeploy.export import export_model
    from mlpdeploy.model import load_model
    from mlpdeploy.model.kv_cache import with_kv_cache

    with console.status(f"exporting {model}"):
        bundle = load_model(model)
        result = export_model(with_kv_cache(bundle) if kv_cache else bundle, output, opset=opset, debug=debug)
    console.print(f"wrote {result.model_path} and {result.manifest_path} in {result.seconds:.1f} s", markup=False)
