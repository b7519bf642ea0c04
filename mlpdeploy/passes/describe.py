"""The registered passes as text, from their declarations: docs/passes.md and `mlpdeploy passes`
print the same facts (a test checks the file against `passes_markdown()`)."""

from __future__ import annotations

from mlpdeploy.passes.base import PHASES
from mlpdeploy.passes.pipeline import available_passes, pass_class

PHASE_TEXT = {
    "rewrite": "mlpdeploy's graph rewrites, in any order among themselves",
    "precision": "a whole-graph type conversion: after every rewrite pass",
    "lowering": "a backend's fused contrib ops, which no other pass reads: last, as a build applies them",
}

HEADER = """# Rewrite passes

Generated from the pass registry by `mlpdeploy passes --markdown > docs/passes.md` (a test checks
that this file matches it). Run passes with `mlpdeploy rewrite MODEL.onnx -o OUT.onnx --pass
NAME[:key=value,...]` or `mlpdeploy compile MODEL --pass ...` (repeatable; a `--plan`'s passes run
first). A bad option is refused in one line naming the values it takes.

Each pass declares (see `mlpdeploy/passes/base.py`): its typed options, its **phase** — the
pipeline runs phases in the order below and refuses a pass after one of a later phase — and, for
an approximate pass, the edit of the torch reference its rewrite implies, which validation
compares the graph with (the task metric is always judged against the unedited model).
"""


FOOTER = """
## Writing a pass

A pass is one file in `mlpdeploy/passes/` (a backend's own lowering passes live in its package,
e.g. `mlpdeploy/backends/onnxruntime/passes/`) and one line in `mlpdeploy/passes/registry.py`:

```python
class RemoveIdentity(RewritePass):
    name = "remove-identity"
    description = "drop Identity nodes; their readers read the Identity's input"
    options = {"keep_outputs": Option(True, "leave an Identity that produces a graph output")}
    phase = "rewrite"  # the default

    def rewrite(self, model: ir.Model) -> PassReport:
        ...  # match with mlpdeploy.passes.matching, check, rewrite; record skipped sites with their reason
```

An approximate pass also states `reference` and either records `module_overrides` in its report
(they travel in the manifest; validation applies them) or implements
`reference_edit(report) -> ReferenceEdit`. The tests then ask for its fuzz target
(`tests/fuzz/fuzz_targets.py`), a determinism case (`tests/fixtures/determinism_run.py`), its
golden op counts (`--update-golden`) and this file (`mlpdeploy passes --markdown > docs/passes.md`).
"""


def passes_markdown() -> str:
    """docs/passes.md: the phases, then every pass with its description and options."""
    lines = [HEADER, "## Phases", "", "| phase | passes | what runs there |", "|---|---|---|"]
    for phase in PHASES:
        names = ", ".join(f"`{n}`" for n in available_passes() if pass_class(n).phase == phase)
        lines.append(f"| {phase} | {names} | {PHASE_TEXT[phase]} |")
    for name in available_passes():
        cls = pass_class(name)
        lines += ["", f"## `{name}`", "", f"{cls.description}.", "", f"Phase: {cls.phase}. Torch reference: {cls.reference}."]
        if cls.options:
            lines += ["", "| option | type | default | allowed | what |", "|---|---|---|---|---|"]
            for key, option in cls.options.items():
                cells = [f"`{key}`", option.type.__name__, f"`{_text(option.default)}`", option.allowed(), option.help]
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        else:
            lines += ["", "No options."]
    return "\n".join(lines) + "\n" + FOOTER


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else '""' if value == "" else str(value)
