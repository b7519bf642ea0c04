"""A pass option, declared once with its type, default, allowed values and one line of help.

`Option(default, help, choices=..., minimum=...)`: the type is the default's (bool, int, float or
str). `check` reads `--pass NAME:key=value` text as that type and holds any value (from
text, a plan's JSON or Python) to the type, the choices and the minimum, and refuses anything
else in one line that names the allowed values. `mlpdeploy passes` and docs/passes.md print
`describe()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlpdeploy.errors import MlpdeployError

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}


@dataclass(frozen=True)
class Option:
    """One typed pass option (see the module docstring)."""

    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None

    def __post_init__(self):
        if type(self.default) not in TYPE_NAMES:
            raise TypeError(f"a pass option's default is a bool, int, float or str, not {type(self.default).__name__}")
        if self.choices is not None and self.default not in self.choices:
            raise TypeError(f"default {self.default!r} is not one of its choices {self.choices}")

    @property
    def type(self) -> type:
        return type(self.default)

    def allowed(self) -> str:
        """The values it takes, in words: `auto, ort, trt`, `an int >= 0`, `true or false`."""
        if self.choices is not None:
            return ", ".join(_text(c) for c in self.choices)
        if self.type is bool:
            return "true or false"
        what = {int: "an int", float: "a number", str: "text"}[self.type]
        return f"{what} >= {_text(self.minimum)}" if self.minimum is not None else what

    def describe(self) -> str:
        """`int = 0 (0, 16, 32): the block size ...`: type, default, allowed values and help on one line."""
        allowed = f" ({self.allowed()})" if self.choices is not None or self.minimum is not None else ""
        return f"{TYPE_NAMES[self.type]} = {_text(self.default)}{allowed}: {self.help}"

    def check(self, value: Any, where: str) -> Any:
        """`value` as this option's type, or a one-line error naming the allowed values.
        A string is read as text (`--pass` values, `true`/`false`); an int is taken where a
        float is wanted; nothing else is converted."""
        converted = _convert(value, self.type)
        if converted is None:
            raise MlpdeployError(f"{where}={value!r} is not {self.allowed() if self.choices is None else 'one of ' + self.allowed()}")
        if self.choices is not None and converted not in self.choices:
            raise MlpdeployError(f"{where}={_text(converted)} is not allowed; choose one of {self.allowed()}")
        if self.minimum is not None and converted < self.minimum:
            raise MlpdeployError(f"{where}={_text(converted)} is too small; it must be {self.allowed()}")
        return converted


def _convert(value: Any, want: type) -> Any:
    """`value` as `want`, or None when it is not one."""
    if isinstance(value, str) and want is not str:
        text = value.strip().lower()
        if want is bool:
            return True if text in TRUE else False if text in FALSE else None
        try:
            return want(text)
        except ValueError:
            return None
    if want is float and type(value) is int:
        return float(value)
    return value if type(value) is want else None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value) if value == "" else value
    return str(value)
