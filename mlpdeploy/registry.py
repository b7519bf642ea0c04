"""Name → class registries for passes, backends and analyses: one line registers a thing,
by "module:Class" inside its package (or an absolute "mlpdeploy.x.y:Class"), imported only when it
is asked for."""

from __future__ import annotations

import importlib

from mlpdeploy.errors import MlpdeployError


class Registry:
    """Registered names → "module:Class" inside `package` (imported on first use), or a class itself
    (`register`, e.g. a user's own backend)."""

    def __init__(self, kind: str, plural: str, package: str, entries: dict[str, str | type], sort: bool = True):
        self.kind, self.plural, self.package, self.entries, self.sort = kind, plural, package, entries, sort

    def names(self) -> list[str]:
        return sorted(self.entries) if self.sort else list(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def register(self, name: str, cls: type) -> None:
        """Register a class under `name` (replacing what was registered there)."""
        self.entries[name] = cls

    def load(self, name: str) -> type:
        """The class registered as `name`, or a one-line error listing the registered names."""
        if name not in self.entries:
            known = ", ".join(self.names()) or "none registered yet"
            raise MlpdeployError(f"unknown {self.kind} {name!r}; available {self.plural}: {known}")
        entry = self.entries[name]
        if isinstance(entry, type):
            return entry
        module, cls = entry.split(":")
        module = module if module.startswith("mlpdeploy.") else f"{self.package}.{module}"  # absolute: another package's
        return getattr(importlib.import_module(module), cls)
