"""`mlpdeploy build`."""

from __future__ import annotations

from pathlib import Path

import click

from mlpdeploy.cli.app import cli, console, debug_option
from mlpdeploy.cli.options import BUILD


@cli.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the built artifact.")
@BUILD
@debug_option
def build(onnx_model: Path, output: Path, debug: bool, **kwargs) -> None:
    """Build ONNX_MODEL into a deployable artifact with a backend."""
    from mlpdeploy.backends import get_backend

    backend, options = BUILD.parse(kwargs)
    impl = get_backend(backend)
    with console.status(f"building with {backend}"):
        result = impl.build(onnx_model, output, options)
    for name, path in result.artifacts.items():
        console.print(f"{name}: {path}", markup=False)
    console.print(f"built in {result.info.get('seconds', 0):.2f} s")


@cli.command(name="backends")
@click.option("--markdown", is_flag=True, help="Print the options reference as Markdown (the generated part of docs/backends.md).")
@debug_option
def backends_cmd(markdown: bool, debug: bool) -> None:
    """List the registered build backends and their options."""
    from rich.table import Table

    from mlpdeploy.backends import BACKENDS
    from mlpdeploy.backends.options import cli_fields, flags_of
    from mlpdeploy.cli.build_options import options_markdown

    if markdown:
        click.echo(options_markdown(), nl=False)
        return
    table = Table(title="build backends")
    for col in ("name", "options", "extra", "description"):
        table.add_column(col)
    for name in BACKENDS.names():
        cls = BACKENDS.load(name)
        own = [flags_of(f, c)[0] for f, c in cli_fields(cls.Options) if f.name not in ("precision", "cache_dir", "cache")]
        table.add_row(name, ", ".join(own) or "-", cls.extra or "-", cls.description)
    console.print(table)
