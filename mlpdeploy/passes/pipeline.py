"""Parse `--pass NAME[:key=value,...]` specs, check a pipeline (options, phase order) and run it.

A pipeline's reports are a list, one per pass in the order they ran (`{"pass": NAME, "options":
{...}, "rewritten": N, ...}`): the same pass twice keeps both reports. `pass_report(reports,
NAME)` finds one by name; `reference_edits(reports)` collects the torch-side edits they imply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedFunctionsPass, RemoveUnusedNodesPass, RemoveUnusedOpsetsPass

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.memory import step
from mlpdeploy.passes.base import PHASES, ReferenceEdit, RewritePass
from mlpdeploy.passes.registry import PASSES


@dataclass
class PassSpec:
    """A pass to run: its name, options, and (from a plan) the module scopes it may rewrite."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    sites: dict[str, dict[str, Any]] | None = None  # scope -> per-site settings; None: every site

    def __str__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}:{opts}" if opts else self.name


def available_passes() -> list[str]:
    return PASSES.names()


def pass_class(name: str) -> type[RewritePass]:
    """The pass class registered as `name`, or a one-line error listing the known passes."""
    return PASSES.load(name)


def parse_pass_spec(text: str) -> PassSpec:
    """Parse `NAME[:key=value,...]`, each value read as its option's declared type and checked."""
    name, _, rest = text.partition(":")
    name = name.strip()
    cls = pass_class(name)
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise MlpdeployError(f"pass {name}: option {item!r} must be key=value")
        options[key.strip()] = value
    checked = cls.checked_options(options)
    return PassSpec(name, {key: checked[key] for key in options})


def check_pipeline(specs: list[PassSpec]) -> None:
    """Refuse, in one line, a pipeline with an unknown pass, a bad option, or a pass after one of a
    later phase (PHASES: rewrite → precision → lowering)."""
    highest: tuple[int, str] | None = None  # the latest phase so far, and its first pass
    for spec in specs:
        cls = pass_class(spec.name)
        cls.checked_options(spec.options)
        rank = PHASES.index(cls.phase)
        if highest is not None and rank < highest[0]:
            before = highest[1]
            raise MlpdeployError(
                f"pass {spec.name} ({cls.phase}) cannot run after {before} ({pass_class(before).phase}): passes run in phase "
                f"order {' → '.join(PHASES)}; put {spec.name} before {before}"
            )
        if highest is None or rank > highest[0]:
            highest = (rank, spec.name)


def resolve_targets(specs: list[PassSpec], target: str) -> list[PassSpec]:
    """Passes whose `target` option is `auto` (as planners write it) get the build's target
    family (`ort` or `trt`, the backend's `pass_target`); the specs are copied, not changed."""
    resolved = []
    for spec in specs:
        declared = pass_class(spec.name).options.get("target")
        if declared is not None and spec.options.get("target", declared.default) == "auto":
            spec = PassSpec(spec.name, {**spec.options, "target": target}, spec.sites)
        resolved.append(spec)
    return resolved


def run_pipeline(model: ir.Model, specs: list[PassSpec]) -> list[dict]:
    """Run the passes in order, in place, then remove dead nodes, functions and opsets.

    Returns one report per pass, in order: `{"pass": name, "options": {...}, **its report}`.
    """
    check_pipeline(specs)
    reports = []
    for spec in specs:
        p = pass_class(spec.name)(sites=spec.sites, **spec.options)
        with step(str(spec)):
            p(model)
        reports.append({"pass": spec.name, **({"options": dict(spec.options)} if spec.options else {}), **p.report.to_json()})
    for cleanup in (RemoveUnusedNodesPass(), RemoveUnusedFunctionsPass(), RemoveUnusedOpsetsPass()):
        cleanup(model)
    return reports


def pass_report(reports: list[dict], name: str) -> dict:
    """The report of the one pass called `name` in a pipeline's reports (a KeyError when it ran
    never or more than once: then pick by position)."""
    found = [r for r in reports if r["pass"] == name]
    if len(found) != 1:
        raise KeyError(f"pass {name} ran {len(found)} times in this pipeline ({[r['pass'] for r in reports]}); pick its report by position")
    return found[0]


def spec_text(report: dict) -> str:
    """A pipeline report's pass as `--pass` text (`quantize-weights:format=int4`)."""
    return str(PassSpec(report["pass"], report.get("options", {})))


def reference_edits(reports: list[dict]) -> list[ReferenceEdit]:
    """The torch-side edits the pipeline's passes declare for what they rewrote, in their order."""
    edits = (pass_class(report["pass"]).reference_edit(report) for report in reports)
    return [edit for edit in edits if edit is not None]
