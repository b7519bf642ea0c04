"""The BUILD option group: `--backend` and every registered backend's options, derived from their typed
options classes (`Backend.Options`, fields declared with `mlpdeploy.backends.options.option`), so a new
backend's options appear here without editing the CLI.

An option two backends declare under one field name (`--target`, `--shapes`) is one click option whose
help names each backend's meaning. `BUILD.parse(kwargs)` gives (backend name, its options instance);
an option the chosen backend does not take, given away from its default, is a one-line error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mlpdeploy.backends.options import BuildOptions, CliOption, cli_fields, field_default, flags_of
from mlpdeploy.errors import MlpdeployError

PREFIX = "build_"  # click parameter names: build_<field> (no clash with a command's own options)


def _backends() -> dict[str, type]:
    from mlpdeploy.backends import BACKENDS

    return {name: BACKENDS.load(name) for name in BACKENDS.entries}


def _declared() -> dict[str, dict[str, Any]]:
    """Field name -> its CliOption, default and the backends that take it (shared fields first declared by BuildOptions)."""
    shared = {f.name for f, _ in cli_fields(BuildOptions)}
    declared: dict[str, dict[str, Any]] = {}
    for name, backend in _backends().items():
        for field, cli in cli_fields(backend.Options):
            entry = declared.setdefault(field.name, {"field": field, "cli": cli, "helps": {}, "backends": [], "shared": field.name in shared})
            if flags_of(field, cli) != flags_of(entry["field"], entry["cli"]) or cli.negate != entry["cli"].negate:
                raise MlpdeployError(f"backends {entry['backends'][0]} and {name} declare option {field.name} with different flags")
            entry["backends"].append(name)
            entry["helps"].setdefault(cli.help, []).append(name)
            if cli.choices != entry["cli"].choices:
                entry["choices_differ"] = True
    order = [n for n, e in declared.items() if not e["shared"]] + [n for n, e in declared.items() if e["shared"]]
    return {n: declared[n] for n in order}


def _click_option(name: str, entry: dict[str, Any]) -> click.Option:
    cli: CliOption = entry["cli"]
    default = field_default(entry["field"])
    helps = entry["helps"]
    text = " ".join(helps) if entry["shared"] else "; ".join(f"{', '.join(names)}: {h.rstrip('.')}" for h, names in helps.items()) + "."
    kwargs: dict[str, Any] = {"help": text, "metavar": cli.metavar}
    if isinstance(default, bool):
        kwargs.update(is_flag=True, default=False)
    elif cli.multiple:
        kwargs.update(multiple=True)
    else:
        kwargs.update(default=default, show_default=default is not None)
    if cli.choices and not entry.get("choices_differ"):
        kwargs["type"] = click.Choice(list(cli.choices))
    elif cli.path:
        kwargs["type"] = click.Path(path_type=Path)
    return click.Option([*flags_of(entry["field"], cli), PREFIX + name], **kwargs)


def _value(entry: dict[str, Any], given: Any) -> tuple[Any, bool]:
    """(the field value for a click value, whether it was set away from the default)."""
    cli: CliOption = entry["cli"]
    if cli.negate:
        return not given, bool(given)
    if cli.multiple:
        return (cli.parse(given) if cli.parse else list(given)), bool(given)
    value = cli.parse(given) if cli.parse and given is not None else given
    return value, given != field_default(entry["field"])


def build_group(option_group_class):
    """The BUILD group: `--backend` plus the options above; `parse` gives (backend, options)."""
    declared = _declared()
    names = ", ".join(_backends())
    backend = click.Option(["--backend", PREFIX + "backend"], default="onnxruntime", show_default=True, help=f"Build backend ({names}).")

    def make(**values):
        from mlpdeploy.backends import BACKENDS

        chosen = values.pop(PREFIX + "backend")
        cls = BACKENDS.load(chosen).Options
        own = {f.name for f, _ in cli_fields(cls)}
        options, stray = {}, []
        for name, entry in declared.items():
            value, set_ = _value(entry, values[PREFIX + name])
            if name in own:
                options[name] = value
            elif set_:
                stray.append(flags_of(entry["field"], entry["cli"])[0])
        if stray:
            takers = sorted({b for name, e in declared.items() if flags_of(e["field"], e["cli"])[0] in stray for b in e["backends"]})
            takes = ", ".join(flags_of(e["field"], e["cli"])[0] for n, e in declared.items() if n in own)
            raise MlpdeployError(f"{', '.join(stray)} {'is an option' if len(stray) == 1 else 'are options'} of backend {' / '.join(takers)}, "
                                 f"not {chosen}; --backend {chosen} takes {takes}")
        return chosen, cls(**options)

    return option_group_class([backend, *(_click_option(n, e) for n, e in declared.items())], make)


def options_markdown() -> str:
    """The backends and their options as Markdown (the generated part of docs/backends.md)."""
    from mlpdeploy.backends import BACKENDS

    def rows(cls, names) -> list[str]:
        out = ["| option | default | what |", "|---|---|---|"]
        for field, cli in cli_fields(cls):
            if field.name in names:
                default = field_default(field)
                shown = None if isinstance(default, bool) else default  # a flag: not given by default
                flag = " / ".join(f"`{f}`" for f in flags_of(field, cli)) + (f" {cli.metavar}" if cli.metavar else "")
                choices = f" ({', '.join(cli.choices)})" if cli.choices else ""
                out.append(f"| {flag} | {'-' if shown in (None, {}, []) else f'`{shown}`'} | {cli.help.rstrip('.')}{choices} |")
        return out

    shared = {f.name for f, _ in cli_fields(BuildOptions)}
    lines = ["## Options every backend takes (`BuildOptions`)", "", *rows(BuildOptions, shared), ""]
    for name in BACKENDS.entries:
        backend = BACKENDS.load(name)
        own = {f.name for f, _ in cli_fields(backend.Options)} - shared
        lines += [f"## `{name}`", "", f"{backend.description}.", "",
                  f"Options class `{backend.Options.__module__}.{backend.Options.__name__}`; artifact suffix `{backend.suffix}`; "
                  f"extra: {f'`{backend.extra}`' if backend.extra else 'none (installed with mlpdeploy)'}; "
                  f"runner: `{backend.__module__}.{backend.__name__}.runner`.", ""]
        lines += [*rows(backend.Options, own), ""] if own else ["No options of its own.", ""]
    return "\n".join(lines).rstrip() + "\n"
