"""Guardrails on the tree itself: the layering of DESIGN.md, a size budget per module, lint.

Layers (imports point down only): cli → (compile, serving) → runtime → (export, analyze, passes, backends,
validate) → (model, quant) → (errors, atomic, onnx_io, scopes, dtypes, registry). runtime sits above the
stages because `Engine.load` runs an artifact through its backend's runner; serving also reads a
backend's saved settings (the Triton config of an ONNX Runtime build). plugins/
imports nothing from mlpdeploy but errors; models/ (the zoo) only model/, plugins/ (the custom ops its
KAN layers call) and errors.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BOTTOM = {"errors", "atomic", "onnx_io", "scopes", "dtypes", "registry", "report", "report_bench"}
LOWER = {"model", "quant", "zoo", "plugins"}
STAGES = {"export", "analyze", "passes", "backends", "validate"}
# What each part of the package may import from mlpdeploy (top-level names after `mlpdeploy.`).
ALLOWED = {
    **{name: BOTTOM | {"plugins"} for name in BOTTOM},
    **{name: BOTTOM | LOWER for name in LOWER},
    **{name: BOTTOM | LOWER | STAGES for name in STAGES},
    "runtime": BOTTOM | LOWER | STAGES,
    "compile": BOTTOM | LOWER | STAGES | {"runtime"},
    "serving": BOTTOM | LOWER | {"runtime", "backends"},
    "cli": BOTTOM | LOWER | STAGES | {"runtime", "compile", "cli", "serving"},
}
MAX_LINES = 450


def _sources():
    for folder, package in (("mlpdeploy", "mlpdeploy"), ("plugins", "mlpdeploy.plugins"), ("models", "mlpdeploy.zoo")):
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield path, package


def _part(path: Path) -> str:
    rel = path.relative_to(ROOT)
    if rel.parts[0] == "plugins":
        return "plugins"
    if rel.parts[0] == "models":
        return "zoo"
    return rel.parts[1].removesuffix(".py") if len(rel.parts) > 1 else ""


def _mlpdeploy_imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("mlpdeploy"):
            names = [node.module] if node.module != "mlpdeploy" else [f"mlpdeploy.{a.name}" for a in node.names]
            for name in names:
                yield node.lineno, name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("mlpdeploy."):
                    yield node.lineno, alias.name


def test_imports_point_down():
    bad = []
    for path, _ in _sources():
        part = _part(path)
        if part in ("", "__init__"):
            continue
        allowed = ALLOWED.get(part)
        assert allowed is not None, f"{path}: {part!r} is not a known layer; add it to tests/test_guardrails.py"
        for line, module in _mlpdeploy_imports(path):
            target = module.split(".")[1] if "." in module else ""
            if target in ("__version__", ""):
                continue
            if part == "plugins" and target not in ("errors", "plugins"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} (plugins/ may import only mlpdeploy.errors)")
            elif part == "zoo" and target not in ("errors", "model", "zoo", "plugins"):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} (the zoo may import only model/, plugins/ and errors)")
            elif target not in allowed and target != part:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}: {part} may not depend on {target}")
    assert not bad, "\n".join(bad)


def test_module_size_budget():
    over = [f"{p.relative_to(ROOT)}: {n} lines" for p, _ in _sources() if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not over, f"split these modules (budget {MAX_LINES} lines): {over}"


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is in the dev extra")
def test_lint_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "mlpdeploy", "plugins", "models", "bench", "tests"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
