"""Guardrails on the tree itself: the layering (docs/architecture.md), no import cycles, a size budget per module, lint.

Floors, top first: cli → (compile, serving, report) → runtime → (export, analyze, passes, backends,
validate) → zoo → (model, quant) → (contract, errors, onnx_io, scopes, atomic, dtypes, registry,
plugins). runtime sits above the stages because `Engine.load` runs an artifact through
its backend's runner.

The import graph is read from the source (every `import` and `from ... import` anywhere in a
file: at module level, inside functions, under `if TYPE_CHECKING:`), not from what happens to be
imported at run time, so a lazy import inside a function counts as much as one at the top.

Rules (each a test below):
1. Floors: a part of the package imports only parts on its own floor or below (`FLOORS`, top first).
2. No cycles at any level: between modules, and between the packages they form at every depth
   (`mlpdeploy.passes` ↔ `mlpdeploy.analyze`, `mlpdeploy.backends.onnxruntime` ↔ `mlpdeploy.backends.tensorrt`, ...).
3. Extra fences inside a floor (`FENCES`): backends import no analyze/validate; plugins/ imports only
   errors and contract from mlpdeploy; the zoo only model/, plugins/, errors and contract.
4. Tests patch no sys.path and import nothing from bench/.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"mlpdeploy": "mlpdeploy", "plugins": "mlpdeploy.plugins", "models": "mlpdeploy.zoo"}  # folder → installed package

# Top first; "" is mlpdeploy/__init__.py (the version). A part may import its own floor and those below.
FLOORS = [
    {"cli"},
    {"compile", "serving", "report", "report_bench", "benchmarks_md"},  # report: compile's HTML page
    {"runtime"},  # above the stages: Engine.load runs an artifact through its backend's runner
    {"export", "analyze", "passes", "backends", "validate"},
    {"zoo"},  # models/: above model/, which names its models only as data (mlpdeploy.model.zoo)
    {"model", "quant"},
    {"onnx_io", "scopes", "errors", "contract", "atomic", "dtypes", "registry", "html_parts", "memory", "plugins", ""},
]
# part → the only parts it may import (besides itself), or the parts it must not import ("not": ...)
FENCES = {
    "backends": {"not": {"analyze", "validate"}},
    "plugins": {"only": {"errors", "contract"}},
    "zoo": {"only": {"model", "plugins", "errors", "contract"}},
    "contract": {"only": set()},
    "errors": {"only": set()},
}
MAX_LINES = 450


@cache
def modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the installed package: dotted name → (file, is a package __init__)."""
    found = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join([package, *(parts[:-1] if is_package else parts)])] = (path, is_package)
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement in `module` loads (a name imported from a package that is
    one of its submodules counts as that submodule)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    _, is_package = modules()[module]
    if node.level:
        base = module.split(".")[: len(module.split(".")) - (node.level - (1 if is_package else 0))]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target, *(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules())]


@cache
def import_graph() -> dict[str, dict[str, int]]:
    """module → {imported mlpdeploy module: line of the first such import}, for every import in the file."""
    graph: dict[str, dict[str, int]] = {}
    for module, (path, _) in modules().items():
        edges = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _targets(module, node):
                    while target not in modules() and "." in target:  # `from mlpdeploy.x import name`: module mlpdeploy.x
                        target = target.rpartition(".")[0]
                    if target in modules() and target != module:
                        edges.setdefault(target, node.lineno)
    return graph


def part(module: str) -> str:
    """The part of the package a module belongs to: `passes` for mlpdeploy.passes.matching.core."""
    return module.split(".")[1] if module.count(".") else ""


def _where(module: str, line: int) -> str:
    return f"{modules()[module][0].relative_to(ROOT)}:{line}"


def _floor(name: str) -> int:
    for i, floor in enumerate(FLOORS):
        if name in floor:
            return i
    raise AssertionError(f"{name!r} is on no floor: add it to FLOORS in tests/test_guardrails.py")


def test_every_part_is_on_a_floor():
    for module in modules():
        _floor(part(module))


def test_imports_point_down():
    bad = []
    for module, edges in import_graph().items():
        for target, line in edges.items():
            src, dst = part(module), part(target)
            if src != dst and _floor(dst) < _floor(src):
                bad.append(f"{_where(module, line)} imports {target}: {src or 'mlpdeploy'} may not depend on {dst} (a floor up)")
    assert not bad, "\n".join(bad)


def test_fences():
    bad = []
    for module, edges in import_graph().items():
        fence = FENCES.get(part(module))
        for target, line in edges.items() if fence else ():
            src, dst = part(module), part(target)
            if dst != src and (dst in fence.get("not", ()) or ("only" in fence and dst not in fence["only"])):
                bad.append(f"{_where(module, line)} imports {target}: {src} may import {_fence_text(fence)}")
    assert not bad, "\n".join(bad)


def _fence_text(fence: dict) -> str:
    if "only" in fence:
        return "only " + (", ".join(sorted(fence["only"])) or "nothing") + " from mlpdeploy"
    return "nothing from " + ", ".join(sorted(fence["not"]))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _collapsed(depth: int | None) -> dict[str, set[str]]:
    """The import graph between packages `depth` names deep (None: between modules). An import of
    a package's own descendant or ancestor is no edge at that depth (a package uses its insides)."""
    graph: dict[str, set[str]] = {}
    for module, edges in import_graph().items():
        for target in edges:
            a, b = (module, target) if depth is None else (".".join(module.split(".")[: depth + 1]), ".".join(target.split(".")[: depth + 1]))
            if a != b and not b.startswith(a + ".") and not a.startswith(b + "."):
                graph.setdefault(a, set()).add(b)
    return graph


@pytest.mark.parametrize("depth", [None, 1, 2, 3], ids=["modules", "packages", "subpackages", "sub-subpackages"])
def test_no_import_cycles(depth):
    cycle = _cycle(_collapsed(depth))
    assert cycle is None, "import cycle: " + " → ".join(cycle) + " (move what both need down a floor)"


def test_the_graph_sees_lazy_and_type_only_imports():
    """The checks above are only as good as the graph: it must hold imports inside functions and
    under TYPE_CHECKING, relative ones, and names imported from a package that are its modules."""
    graph = import_graph()
    assert "mlpdeploy.passes.matching" in graph["mlpdeploy.passes.quantize_weights"]
    assert "mlpdeploy.model.cache_layout" in graph["mlpdeploy.model.bundle"]  # under TYPE_CHECKING
    assert "mlpdeploy.plugins.gated_mlp.reference" in graph["mlpdeploy.plugins.gated_mlp.onnx_function"]  # `from .reference import`
    lazy = [m for m, edges in graph.items() for t in edges if m.startswith("mlpdeploy.cli.") and t.startswith("mlpdeploy.compile")]
    assert lazy, "cli imports compile inside its commands; the graph lost function-level imports"
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"] and _cycle({"a": {"b"}}) is None


def test_tests_patch_no_sys_path_and_import_nothing_from_bench():
    """Tests import what they test from the package and their helpers as packages (tests/ mirrors
    mlpdeploy/); a benchmark script is run as a process, as a user runs it, never imported."""
    bad = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name) and node.value.id == "sys":
                bad.append(f"{where} uses sys.path")
            elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "bench" for a in node.names):
                bad.append(f"{where} imports bench")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "bench" and not node.level:
                bad.append(f"{where} imports from bench")
    assert not bad, "\n".join(bad)


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_no_wheels_or_large_binaries_are_tracked():
    """Tools come from the package's extras (ruff: dev), not from files in the repository."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\0")
    bad = [f for f in tracked if f and (f.endswith(".whl") or ((ROOT / f).is_file() and (ROOT / f).stat().st_size > 5 * 2**20))]
    assert not bad, f"tracked wheels or files over 5 MiB: {bad}"


def test_module_size_budget():
    over = [f"{p.relative_to(ROOT)}: {n} lines" for p, _ in modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not over, f"split these modules (budget {MAX_LINES} lines): {over}"


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is in the dev extra")
def test_lint_clean():
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "mlpdeploy", "plugins", "models", "bench", "tests"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
