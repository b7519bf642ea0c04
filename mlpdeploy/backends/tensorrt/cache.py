"""Caches on disk for TensorRT builds: whole engines (TensorRT-RTX) and builder timing caches (TensorRT).

They live under `BuildOptions.cache_root()`: `cache_dir`, else `$MLPDEPLOY_CACHE_DIR`, else
`~/.cache/mlpdeploy`; `cache=False` (`--no-cache`) turns them off.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mlpdeploy.atomic import staged_files
from mlpdeploy.errors import MlpdeployError


def file_digest(*paths: Path, settings: dict[str, Any]) -> str:
    """sha256 over the files' bytes (those that exist) and the JSON of `settings`."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in paths:
        if path.exists():
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


class EngineCache:
    """Built engines (and their build info) keyed by a digest of the parsed ONNX and the settings."""

    def __init__(self, root: Path | None, product: str):
        self.dir = root / product if root is not None else None

    def load(self, key: str) -> tuple[bytes, dict] | None:
        if self.dir is None:
            return None
        engine, meta = self.dir / f"{key}.engine", self.dir / f"{key}.json"
        try:
            return engine.read_bytes(), json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def store(self, key: str, engine: bytes, meta: dict) -> None:
        if self.dir is None:
            return
        try:
            with staged_files(self.dir / f"{key}.engine") as tmp:
                tmp.write_bytes(engine)
                tmp.with_suffix(".json").write_text(json.dumps(meta))
        except (OSError, MlpdeployError):
            pass  # a cache that cannot be written only costs the next build its time


class TimingCache:
    """A builder timing cache kept in a file (datacenter TensorRT; TensorRT-RTX ignores timing caches)."""

    def __init__(self, root: Path | None, product: str, device_key: str):
        self.path = root / product / f"timing-{device_key}.cache" if root is not None else None
        self.loaded_bytes = 0
        self._config = None

    def attach(self, config) -> None:
        """Load the file (if any) into `config`'s timing cache; call before building."""
        if self.path is None:
            return
        data = self.path.read_bytes() if self.path.is_file() else b""
        cache = config.create_timing_cache(data)
        if not config.set_timing_cache(cache, False):  # a cache from another TensorRT or GPU: start afresh
            data = b""
            config.set_timing_cache(config.create_timing_cache(data), False)
        self.loaded_bytes, self._config = len(data), config

    def save(self) -> int:
        """Write the (grown) cache back atomically; returns its size in bytes."""
        if self.path is None or self._config is None:
            return 0
        data = bytes(self._config.get_timing_cache().serialize())
        try:
            with staged_files(self.path) as tmp:
                tmp.write_bytes(data)
        except (OSError, MlpdeployError):
            return 0
        return len(data)
