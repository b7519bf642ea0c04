"""The zoo's registry: a name maps to a builder returning a ModelBundle."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from mlpdeploy.model.bundle import ModelBundle


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: `builder` is "module:function" inside mlpdeploy.zoo, imported lazily."""

    name: str
    builder: str
    description: str
    trained: bool = False

    def build(self) -> ModelBundle:
        module_name, func = self.builder.split(":")
        factory: Callable[[], ModelBundle] = getattr(importlib.import_module(f"mlpdeploy.zoo.{module_name}"), func)
        bundle = factory()
        bundle.source = self.name
        bundle.kind = "zoo"
        return bundle
