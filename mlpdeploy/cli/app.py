"""The command group: every command's errors are handled here, once.

A user error (`MlpdeployError`) prints one line and exits 2 (a numerics failure exits 1);
anything else is a bug or an unexpected library failure: one line naming the exception type,
exit 2. `--debug` (before or after the command) adds the traceback.
"""

from __future__ import annotations

import sys
import traceback

import click
from rich.console import Console
from rich.markup import escape

from mlpdeploy.errors import MlpdeployError, first_line

console = Console()
err_console = Console(stderr=True)


DEBUG_KEY = "mlpdeploy.debug"  # in ctx.meta, which the group's context shares with its subcommand's


class MlpdeployGroup(click.Group):
    """A click group whose every subcommand gets the same error handling."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MlpdeployError as exc:
            self._fail(ctx, str(exc), exc.exit_code)
        except KeyboardInterrupt:  # every artifact is written atomically: what exists is complete
            self._fail(ctx, "interrupted; artifacts are written whole or not at all, so nothing partial was left", 130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug or an unexpected library failure
            self._fail(ctx, f"{type(exc).__name__}: {first_line(exc)} (rerun with --debug for the traceback)", 2)

    @staticmethod
    def _fail(ctx: click.Context, message: str, code: int) -> None:
        if ctx.meta.get(DEBUG_KEY):
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        sys.exit(code)


def _remember_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta[DEBUG_KEY] = True
    return value


def debug_requested() -> bool:
    """Whether --debug was given, to the group or to the running command."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(DEBUG_KEY))


debug_option = click.option("--debug", is_flag=True, callback=_remember_debug, help="Show tracebacks and the exporter's own log.")


@click.group(cls=MlpdeployGroup, context_settings={"help_option_names": ["-h", "--help"]})
@debug_option
@click.version_option(package_name="mlpdeploy")
def cli(debug: bool) -> None:
    """mlpdeploy: compile PyTorch MLP-heavy models to optimized ONNX / engines, with numerics proof.

    MODEL is a zoo name (see `mlpdeploy zoo`), path/to/file.py:factory, a Hugging Face
    model directory (config.json + weights), or a torch.export .pt2 file.
    """
