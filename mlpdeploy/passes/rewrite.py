"""Stage 3: run the pass pipeline on an ONNX model and save the result with its manifest."""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from pathlib import Path

import onnx_ir as ir

from mlpdeploy.atomic import staged_files
from mlpdeploy.memory import step
from mlpdeploy.model.manifest import find_manifest
from mlpdeploy.model.overrides import describe_override
from mlpdeploy.onnx_io import load_ir, write_onnx
from mlpdeploy.passes.pipeline import PassSpec, pass_report, run_pipeline


@dataclass
class RewriteResult:
    model_path: Path
    passes: list[dict]  # one report per pass, in the order they ran (pipeline.run_pipeline)
    op_counts_before: dict[str, int]
    op_counts_after: dict[str, int]
    seconds: float

    def to_json(self) -> dict:
        return {
            "passes": self.passes,
            "op_counts_before": self.op_counts_before,
            "op_counts_after": self.op_counts_after,
            "seconds": round(self.seconds, 3),
        }

    def report(self, name: str) -> dict:
        """The report of the one pass called `name` (pipeline.pass_report)."""
        return pass_report(self.passes, name)


def op_counts(model: ir.Model) -> dict[str, int]:
    """Node count per op type (domain-qualified for non-standard domains), sorted by name."""
    counts = collections.Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in model.graph)
    return dict(sorted(counts.items()))


def rewrite_model(model_path: Path | str, output: Path | str, passes: list[PassSpec]) -> RewriteResult:
    """Apply `passes` in order to the model at `model_path`; write `output` and its manifest."""
    output = Path(output)
    start = time.perf_counter()
    with step("load"):
        model = load_ir(model_path)
    before = op_counts(model)
    reports = run_pipeline(model, passes)
    after = op_counts(model)
    seconds = time.perf_counter() - start
    with step("save"), staged_files(output) as tmp:
        write_onnx(model, tmp)
        manifest = find_manifest(model_path)
        if manifest is not None:
            overrides = {k: v for r in reports for k, v in r.get("module_overrides", {}).items()}
            derived = manifest.derived("rewrite", passes=[str(p) for p in passes], seconds=round(seconds, 3),
                                       **({"module_overrides": overrides} if overrides else {}))
            removed_inputs = [n for r in reports for n in r.get("removed_inputs", [])]
            removed_outputs = [n for r in reports for n in r.get("removed_outputs", [])]
            added = [o for r in reports for o in r.get("added_outputs", [])]
            entries = {k: v for r in reports for k, v in r.get("manifest", {}).items()}
            derived.without(removed_inputs, removed_outputs).with_additions(added, entries).save_beside(tmp)
    for report in reports:  # the manifest keeps the full edits (sparse-mlp's predictors); reports say them in a line
        if report.get("module_overrides"):
            report["module_overrides"] = {k: describe_override(v) for k, v in report["module_overrides"].items()}
        report.pop("manifest", None)  # in the manifest now (draft heads' token ids: too long for a report)
        if report.get("added_outputs"):
            report["added_outputs"] = [o["name"] for o in report["added_outputs"]]
    return RewriteResult(output, reports, before, after, seconds)
