"""The two kinds of failure a user can see, and their exit codes."""

from __future__ import annotations


class MlpdeployError(Exception):
    """A problem with the user's input or environment: one line, names the thing and the fix. Exit 2."""

    exit_code = 2


class NumericsError(MlpdeployError):
    """The candidate's numbers drifted past tolerance. Exit 1."""

    exit_code = 1


class OpError(MlpdeployError, ValueError):
    """A custom op (plugins/) was given inputs, attributes or a model it cannot take: one line, exit 2.

    Also a ValueError, which is what its callers inside Python expect of a bad argument.
    """


class MissingExtraError(MlpdeployError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str, purpose: str = ""):
        what = f" for {purpose}" if purpose else ""
        super().__init__(
            f"{module} is not installed{what}: pip install 'mlpdeploy[{extra}]' (or `make setup`)"
        )


def require(module: str, extra: str, purpose: str = ""):
    """Import an optional dependency or raise a one-line error naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module, extra, purpose) from exc


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
