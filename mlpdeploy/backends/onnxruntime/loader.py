"""Loaders for the `onnxruntime` backend (Polygraphy's style: a lazy callable whose `__init__` stores the
settings and `call_impl` does the work, plus an eager function for the same thing)."""

from __future__ import annotations

from pathlib import Path

from polygraphy.backend.base import BaseLoader

from mlpdeploy.backends.onnxruntime.session import make_session, saved_session_config


class SessionFromArtifact(BaseLoader):
    """An InferenceSession for an ONNX model with the session settings saved beside it at build time
    (`<name>.session.json`: providers, optimization level, the compiled kernels library), else the
    defaults; `config` replaces them, `threads` and `config_entries` override parts of them."""

    def __init__(self, model_path: Path | str, config: dict | None = None, threads: int | None = None,
                 config_entries: dict[str, str] | None = None):
        self.model_path, self.config, self.threads, self.config_entries = Path(model_path), config, threads, config_entries

    def settings(self) -> dict:
        """The session settings this loader uses (plain JSON data, as `session_config` makes them)."""
        config = dict(self.config if self.config is not None else saved_session_config(self.model_path))
        if self.threads is not None:
            config["intra_op_num_threads"] = self.threads
        if self.config_entries:
            config["config_entries"] = {**config.get("config_entries", {}), **self.config_entries}
        return config

    def call_impl(self):
        return make_session(self.model_path, self.settings())


def session_from_artifact(model_path: Path | str, config: dict | None = None, threads: int | None = None,
                          config_entries: dict[str, str] | None = None):
    """Eager `SessionFromArtifact`: the session itself."""
    return SessionFromArtifact(model_path, config, threads, config_entries)()
