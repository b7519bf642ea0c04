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
