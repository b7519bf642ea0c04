"""Build options as typed dataclasses: `BuildOptions` holds what every backend takes, and each backend
subclasses it with its own fields (`OrtOptions`, `RTXOptions`, `TensorRTOptions`).

A field declares its command-line option with `option(...)` (flag, help, choices, how the text is
parsed), so the CLI derives `--backend`'s options from the registered backends and cannot drift
from them; the same data documents them (docs/backends.md).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlpdeploy.dtypes import PRECISIONS
from mlpdeploy.errors import MlpdeployError


@dataclass(frozen=True)
class CliOption:
    """How a build option appears on the command line."""

    help: str
    flags: tuple[str, ...] = ()  # default: --<field-name-with-dashes>
    choices: tuple[str, ...] | None = None
    multiple: bool = False  # repeatable; `parse` gets the tuple of strings
    parse: Callable[[Any], Any] | None = None  # command-line value -> field value
    negate: bool = False  # a flag that turns a True-by-default field off (--no-cache)
    metavar: str | None = None
    path: bool = False


def option(default: Any = None, *, help: str, factory: Callable[[], Any] | None = None, **cli: Any) -> Any:
    """A dataclass field with its command-line option (see `CliOption`)."""
    metadata = {"cli": CliOption(help=help, **cli)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def cli_fields(cls: type) -> list[tuple[dataclasses.Field, CliOption]]:
    """The fields of an options class that have a command-line option, in declaration order."""
    return [(f, f.metadata["cli"]) for f in dataclasses.fields(cls) if "cli" in f.metadata]


def flags_of(field: dataclasses.Field, cli: CliOption) -> tuple[str, ...]:
    return cli.flags or ("--" + field.name.replace("_", "-"),)


def field_default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


@dataclass
class BuildOptions:
    """What every backend takes; a backend's own options class (its `Backend.Options`) adds the rest."""

    precision: str = option("fp32", choices=PRECISIONS, help="Engine precision (TensorRT backends; also picks validation tolerances).")
    cache_dir: Path | None = option(
        None, path=True, help="TensorRT engine/timing cache and compiled CPU kernels (default $MLPDEPLOY_CACHE_DIR or ~/.cache/mlpdeploy).")
    cache: bool = option(True, flags=("--no-cache",), negate=True, help="Do not read or write the TensorRT cache.")

    def cache_root(self) -> Path | None:
        """Where caches live: `cache_dir`, else $MLPDEPLOY_CACHE_DIR, else ~/.cache/mlpdeploy; None when `cache` is off."""
        if not self.cache:
            return None
        root = self.cache_dir or os.environ.get("MLPDEPLOY_CACHE_DIR") or Path.home() / ".cache" / "mlpdeploy"
        return Path(root).expanduser()


def as_options(options: BuildOptions | None, cls: type[BuildOptions], backend: str) -> tuple[BuildOptions, list[str]]:
    """`options` as an instance of `cls` (a backend's options class), and the names of the fields it had
    that `cls` lacks, set away from their defaults (another backend's options: reported, not applied)."""
    if options is None:
        return cls(), []
    if isinstance(options, cls):
        return options, []
    if not isinstance(options, BuildOptions):
        raise MlpdeployError(f"backend {backend} takes build options as {cls.__name__}, not {type(options).__name__}")
    own = {f.name for f in dataclasses.fields(cls)}
    values = {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name in own}
    ignored = [f.name for f in dataclasses.fields(options) if f.name not in own and getattr(options, f.name) != field_default(f)]
    return cls(**values), ignored
