"""The `mlpdeploy` command line: a thin layer over the library (every command is one API call).

`app.py` holds the group and the error handling every command shares; `options.py` the
option groups several commands take; one module per command family registers its commands.
"""

from mlpdeploy.cli import analyze, bench, build, compile, generate, model, rewrite, serve, validate  # noqa: F401  (registers the commands)
from mlpdeploy.cli.app import cli


def main() -> None:
    cli()
