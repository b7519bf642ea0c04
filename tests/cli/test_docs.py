"""The docs against the code: generated pages current, every command and option the docs use exists,
every registered pass, backend, op, analysis and zoo model documented, every link and path real."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import click
import pytest

from mlpdeploy.cli import cli
from mlpdeploy.cli.docs import REGENERATE, cli_markdown, stale

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
# The pages that describe mlpdeploy as it is today (CHANGELOG.md is history: old names stay there).
REFERENCE = [ROOT / "README.md", *DOCS]
LINKED = [*REFERENCE, ROOT / "CHANGELOG.md", ROOT / "BENCHMARKS.md", *sorted(ROOT.glob("plugins/*/README.md"))]
TOP = {"mlpdeploy", "bench", "tests", "plugins", "models", "docs"}  # a path starting here must exist in the repository


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_generated_pages_are_current():
    old = [_rel(p) for p in stale(ROOT)]
    assert not old, f"stale generated docs {old}: run `{REGENERATE}`"


def test_the_cli_page_has_every_command_and_option():
    text = cli_markdown()
    for name, command in cli.commands.items():
        if command.hidden:
            continue
        assert f"## mlpdeploy {name}\n" in text
        section = text.split(f"## mlpdeploy {name}\n", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and "--debug" not in param.opts:
                assert all(flag in section for flag in param.opts), (name, param.opts)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; the reference belongs in docs/"


def _readme_paragraph(start: str) -> str:
    text = (ROOT / "README.md").read_text()
    assert start in text, f"README.md has no paragraph starting {start!r}"
    return text.split(start, 1)[1].split("\n\n", 1)[0]


def test_readme_extras_match_pyproject_and_makefile():
    """The extras the README lists are pyproject's (no more, no fewer), and the ones `make` installs are the Makefile's."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = set(project["optional-dependencies"])
    requirements = [*project["dependencies"], *(dep for deps in project["optional-dependencies"].values() for dep in deps)]
    packages = {re.match(r"[A-Za-z0-9_.-]+", dep).group(0) for dep in requirements} - extras  # `onnxruntime`: a package, not an extra
    named = set(re.findall(r"`([a-z][a-z0-9-]*)`", _readme_paragraph("Extras ("))) - packages
    assert named == extras, f"README extras {sorted(named)} vs pyproject {sorted(extras)}"
    make_extras = re.search(r"^EXTRAS := (\S+)$", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    assert f"the extras `{make_extras}`" in _readme_paragraph("Both create or reuse")


def test_readme_make_targets_exist():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", (ROOT / "README.md").read_text()))
    assert named and named <= targets, f"README names make targets the Makefile lacks: {sorted(named - targets)}"


# --- commands in the docs --------------------------------------------------------------------------


def _code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def command_lines(text: str) -> list[str]:
    """Every `mlpdeploy ...` invocation in a page: lines of fenced shell blocks (continuations joined)
    and inline code spans."""
    found = []
    for language, body in _code_blocks(text):
        if language not in ("", "bash", "sh", "shell", "console"):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\s*(\$\s+)?(\S*/)?(?=mlpdeploy\s)", "", line)
            if line.startswith("mlpdeploy "):
                found.append(line)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    found += [span for span in re.findall(r"`([^`\n]+)`", prose) if re.match(r"(\S*/)?mlpdeploy [a-z]", span)]
    return [re.sub(r"^\S*/(?=mlpdeploy )", "", line) for line in found]


def _tokens(line: str) -> list[str]:
    line = line.split(" #", 1)[0]
    try:
        tokens = shlex.split(line)
    except ValueError:
        tokens = line.split()
    cut = next((i for i, t in enumerate(tokens) if t in ("|", "||", "&&", ";", ">", ">>", "2>&1") or t.startswith("#")), len(tokens))
    return [t.strip("[]") for t in tokens[:cut]]


def check_command(line: str) -> list[str]:
    """What is wrong with one documented invocation: an unknown command, or options it does not take."""
    tokens = _tokens(line)
    global_flags = {"--debug", "--help", "-h", "--version"}
    if len(tokens) < 2 or tokens[1] in global_flags or tokens[1].isupper():  # a usage line: mlpdeploy [OPTIONS] COMMAND
        return []
    command = cli.commands.get(tokens[1])
    if command is None:
        return [f"`{line}`: no command {tokens[1]!r} (commands: {', '.join(sorted(cli.commands))})"]
    flags = {flag for p in command.params if isinstance(p, click.Option) for flag in (*p.opts, *p.secondary_opts)} | global_flags
    problems = []
    for token in tokens[2:]:
        if not token.startswith("-") or token in ("-", "--") or re.fullmatch(r"-\d.*", token):
            continue
        flag = token.split("=", 1)[0]
        if flag.lstrip("-").isupper() or "…" in flag or "..." in flag:  # a placeholder such as --ANALYSIS
            continue
        if flag not in flags:
            problems.append(f"`{line}`: `mlpdeploy {tokens[1]}` has no option {flag}")
    return problems


@pytest.mark.parametrize("page", REFERENCE, ids=_rel)
def test_documented_commands_and_options_exist(page):
    lines = command_lines(page.read_text())
    problems = [p for line in lines for p in check_command(line)]
    assert not problems, "\n".join(problems)


def test_the_command_check_can_fail():
    assert check_command("mlpdeploy compile llama-tiny -o out --no-such-flag")
    assert check_command("mlpdeploy frobnicate x")
    assert not check_command("mlpdeploy compile llama-tiny -o out --kv-cache --pass fuse-gated-mlp  # a comment --nope")
    assert command_lines("```\n$ .venv/bin/mlpdeploy zoo\npip install x\n```\nrun `mlpdeploy passes --markdown` now") == [
        "mlpdeploy zoo", "mlpdeploy passes --markdown"]


@pytest.mark.parametrize("page", REFERENCE, ids=_rel)
def test_documented_python_imports_exist(page):
    """Every `from mlpdeploy... import name` in a page's Python blocks imports."""
    problems = []
    for language, body in _code_blocks(page.read_text()):
        if language != "python":
            continue
        for module, names in re.findall(r"^\s*from (mlpdeploy[\w.]*) import ([\w, ]+)", body, flags=re.M):
            try:
                loaded = importlib.import_module(module)
            except ImportError as exc:
                problems.append(f"{module}: {exc}")
                continue
            problems += [f"{module} has no {name}" for name in (n.strip() for n in names.split(",")) if not hasattr(loaded, name)]
    assert not problems, "\n".join(problems)


def unresolved_names(text: str) -> list[str]:
    """Dotted `mlpdeploy.…` names in a page's code spans (outside code blocks) that import or getattr cannot find."""
    missing = []
    for span in re.findall(r"`([^`\n]+)`", _strip_code_blocks(text)):
        for name in re.findall(r"\bmlpdeploy(?:\.[A-Za-z_]\w*)+", span):
            parts = name.split(".")
            for i in range(len(parts), 0, -1):
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ImportError:
                    continue
                for attr in parts[i:]:
                    obj = getattr(obj, attr, None)
                    if obj is None:
                        missing.append(name)
                        break
                break
    return missing


@pytest.mark.parametrize("page", REFERENCE, ids=_rel)
def test_documented_python_names_exist(page):
    missing = unresolved_names(page.read_text())
    assert not missing, f"{_rel(page)} names what mlpdeploy does not have: {missing}"


def test_the_name_check_can_fail():
    assert unresolved_names("use `mlpdeploy.runtime.generate.CachedGenerator` and `mlpdeploy.runtime.Nope`, "
                            "`mlpdeploy.no_such_module`") == ["mlpdeploy.runtime.Nope", "mlpdeploy.no_such_module"]


# --- registries ------------------------------------------------------------------------------------


def test_every_registered_pass_backend_and_analysis_is_documented():
    from mlpdeploy.analyze.registry import ANALYSES
    from mlpdeploy.backends import BACKENDS
    from mlpdeploy.passes import available_passes

    passes, backends = (ROOT / "docs/passes.md").read_text(), (ROOT / "docs/backends.md").read_text()
    missing = [f"pass {n}" for n in available_passes() if f"## `{n}`" not in passes]
    missing += [f"backend {n}" for n in BACKENDS.names() if f"## `{n}`" not in backends]
    analyze = (ROOT / "docs/analyze.md").read_text()
    missing += [f"analysis {n}" for n in ANALYSES.names() if f"`--{n}" not in analyze]
    assert not missing, f"undocumented: {missing}"


def test_passes_that_edit_the_reference_say_so():
    """docs/passes.md prints each pass's `reference`: a pass that edits the torch reference must not
    inherit the default "exact" sentence."""
    from mlpdeploy.passes.base import RewritePass
    from mlpdeploy.passes.registry import PASSES

    wrong = [name for name in PASSES.names()
             if PASSES.load(name).reference_edit.__func__ is not RewritePass.reference_edit.__func__
             and PASSES.load(name).reference == RewritePass.reference]
    assert not wrong, f"passes with a reference_edit whose docs say 'exact': {wrong}"


def test_every_custom_op_is_in_the_op_table():
    from mlpdeploy.plugins.registry import OPS

    text = (ROOT / "docs/ops.md").read_text()
    for name, op in OPS.items():
        assert re.search(rf"^\| \[?`{name}`", text, flags=re.M), f"docs/ops.md: no row for {name}"
        assert f"../plugins/{op.folder}/README.md" in text, f"docs/ops.md: no link to plugins/{op.folder}/README.md"


def test_every_zoo_model_is_in_the_zoo_table():
    from mlpdeploy.zoo import ZOO

    text = (ROOT / "docs/models.md").read_text()
    missing = [name for name in ZOO if f"`{name}`" not in text]
    assert not missing, f"docs/models.md does not list {missing}"


def test_the_layering_table_is_the_guardrails():
    """docs/architecture.md's floors are tests/test_guardrails.py's FLOORS, floor by floor (read from its source)."""
    import ast

    tree = ast.parse((ROOT / "tests/test_guardrails.py").read_text())
    floors = next(ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FLOORS" for t in node.targets))
    text = (ROOT / "docs/architecture.md").read_text()
    table = {int(n): set(re.findall(r"`(\w+)`", row)) for n, row in re.findall(r"^\| (\d+) \| (.*) \|$", text, flags=re.M)}
    expected = {i + 1: set(floor) - {""} for i, floor in enumerate(floors)}
    assert table == expected, f"docs/architecture.md floors {table} vs tests/test_guardrails.py {expected}"


# --- links and paths -------------------------------------------------------------------------------


def _strip_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def broken_references(page: Path) -> list[str]:
    """Relative links that lead nowhere, and repository paths named in code spans that do not exist."""
    text = page.read_text()
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _strip_code_blocks(text)):
        if re.match(r"[a-z]+:|#", target):
            continue
        if not (page.parent / target.split("#", 1)[0]).exists():
            problems.append(f"link {target}")
    for span in re.findall(r"`([^`\n]+)`", _strip_code_blocks(text)):
        for word in span.split():
            path = re.sub(r"(::|:)[\w.\[\]-]*$", "", word.strip("(),;"))
            if re.search(r"[<>*{}…]|\.\.\.|\bNAME\b|\bX\b", path) or path.startswith("bench/results/"):
                continue
            if "/" in path and path.split("/", 1)[0] in TOP and not (ROOT / path).exists():
                problems.append(f"path {path}")
            elif re.fullmatch(r"[A-Z][A-Z_]+\.md", path) and not ((ROOT / path).exists() or (ROOT / "docs" / path).exists()):
                problems.append(f"file {path}")
    return problems


@pytest.mark.parametrize("page", [p for p in LINKED if p.exists()], ids=_rel)
def test_links_and_paths_exist(page):
    problems = broken_references(page)
    assert not problems, f"{_rel(page)} refers to what is not in the repository: {problems}"


def test_the_reference_check_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[x](nowhere.md) see `ENVIRONMENT.md` and `bench/nothing.py`; `mlpdeploy/cli/app.py` is real\n")
    assert broken_references(page) == ["link nowhere.md", "file ENVIRONMENT.md", "path bench/nothing.py"]
