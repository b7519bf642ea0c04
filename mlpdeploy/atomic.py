"""Atomic artifact writing: everything is written to a temp path and renamed at the end,
so a failed run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from mlpdeploy.errors import MlpdeployError

# Write failures a user can fix (space, permissions, a read-only mount): one-line errors, not tracebacks.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def ensure_writable_dir(directory: Path) -> list[Path]:
    """Create `directory` (and parents) or raise a one-line error naming it; returns the
    directories it created, deepest first (so a failed run can remove them again)."""
    created, parent = [], directory
    while not parent.exists() and parent != parent.parent:
        created.append(parent)
        parent = parent.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_empty(created)
        raise MlpdeployError(f"cannot create output directory {directory}: {exc.strerror}; choose a writable path with -o") from exc
    if not os.access(directory, os.W_OK):
        _remove_empty(created)
        raise MlpdeployError(f"output directory {directory} is not writable; choose a writable path with -o")
    return created


def _remove_empty(directories: list[Path]) -> None:
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


@contextlib.contextmanager
def _no_trace_on_failure(final: Path, created: list[Path]) -> Iterator[None]:
    """On any failure (Ctrl-C included) remove the directories made for `final`; a write the user
    can fix (disk full, read-only, permissions) becomes a one-line error."""
    try:
        yield
    except OSError as exc:
        _remove_empty(created)
        if exc.errno in WRITE_ERRNOS:
            raise MlpdeployError(f"cannot write {final}: {exc.strerror}; free space or choose a writable path with -o "
                                 "(nothing was written)") from exc
        raise
    except BaseException:
        _remove_empty(created)
        raise


@contextlib.contextmanager
def staged_files(final: Path | str) -> Iterator[Path]:
    """Yield a temp path with the same basename as `final`, in a staging directory beside it.

    Every file written into the staging directory (the model and, e.g., its external data
    file) is moved next to `final` when the block succeeds; on error (Ctrl-C included) nothing
    is left behind, not even the directories made for it.
    """
    final = Path(final)
    created = ensure_writable_dir(final.parent)
    with _no_trace_on_failure(final, created):
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            yield stage / final.name
            for item in sorted(stage.iterdir()):
                os.replace(item, final.parent / item.name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def write_text(path: Path | str, text: str) -> Path:
    """Write a text file atomically."""
    path = Path(path)
    with staged_files(path) as tmp:
        tmp.write_text(text)
    return path


def write_json(path: Path | str, obj) -> Path:
    """Write a JSON file atomically (indented, keys in insertion order)."""
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: Path | str, what: str, how_to_make: str):
    """A JSON file's content, or a one-line error naming `what` it is and `how_to_make` one."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise MlpdeployError(f"{what} {path} not found; {how_to_make}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MlpdeployError(f"{what} {path} is not valid JSON; {how_to_make}") from None


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


@contextlib.contextmanager
def staged_directory(final: Path | str) -> Iterator[Path]:
    """Yield an empty temp directory beside `final`; on success its files move into `final`.

    Used for multi-artifact runs (compile): on error nothing appears in `final`.
    """
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise MlpdeployError(f"output {final} exists and is not a directory; choose a directory path with -o")
    created = ensure_writable_dir(final.parent)
    with _no_trace_on_failure(final, created):
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            yield stage
            final.mkdir(exist_ok=True)
            for item in sorted(stage.iterdir()):
                target = final / item.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(item, target)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
