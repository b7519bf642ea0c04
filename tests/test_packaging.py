"""Packaging: every package folder is listed in pyproject (plugins/ and models/ install under mlpdeploy)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPING = {"mlpdeploy": "mlpdeploy", "mlpdeploy.zoo": "models", "mlpdeploy.plugins": "plugins"}


def test_every_package_folder_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for package, folder in MAPPING.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found == listed


def test_torch_pinned_exactly_for_make():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()
