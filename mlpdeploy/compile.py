"""`compile`: export → rewrite → build → validate, writing every artifact and a report into one directory."""

from __future__ import annotations

import dataclasses
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mlpdeploy import __version__
from mlpdeploy.analyze.plan import Plan, load_plan
from mlpdeploy.atomic import staged_directory, write_json, write_text
from mlpdeploy.backends import BuildOptions, get_backend
from mlpdeploy.contract import DEFAULT_OPSET
from mlpdeploy.export import export_model
from mlpdeploy.memory import MemoryTracker, release_memory, step, tracking
from mlpdeploy.model import ModelBundle, load_model
from mlpdeploy.model.draft_heads import heads_reference
from mlpdeploy.model.kv_cache import with_kv_cache
from mlpdeploy.model.paging import release_weights
from mlpdeploy.model.tasks import DataOptions, attach_task
from mlpdeploy.passes import PassSpec, rewrite_model
from mlpdeploy.passes.pipeline import check_pipeline, reference_edits, resolve_targets
from mlpdeploy.report import render_html
from mlpdeploy.validate import ValidateOptions, validate
from mlpdeploy.validate.html import validation_section

StageHook = Callable[[str, str, float | None], None]  # (stage, "start" | "done", seconds)


@dataclass
class CompileOptions:
    """`plan`: a plan.json from `analyze` whose passes run before `passes`. `kv_cache`: export the
    decoder with its KV cache (one graph for prefill and decode). `data`: the user's data (`--data`),
    which defines the task validation judges the build on (default: a zoo model's own task)."""

    passes: list[PassSpec] = field(default_factory=list)
    plan: Path | None = None
    kv_cache: bool = False  # export a decoder with its KV cache (mlpdeploy.model.kv_cache)
    backend: str = "onnxruntime"
    build: BuildOptions = field(default_factory=BuildOptions)
    atol: float | None = None
    rtol: float | None = None
    opset: int = DEFAULT_OPSET
    seed: int = 0
    task_limit: int | None = 128  # eval samples for the task metric (None: the whole eval split)
    max_metric_delta: float | None = None  # default: the plan's budget, if it has one
    relative_metric_delta: bool = False  # max_metric_delta is a fraction of the reference's metric
    debug: bool = False
    data: DataOptions | None = None


class _Stages:
    """Times each stage, measures its peak resident memory (and its steps', `mlpdeploy.memory`),
    and tells the hook when it starts and ends."""

    def __init__(self, hook: StageHook | None):
        self.hook = hook or (lambda *_: None)
        self.records: dict[str, dict[str, Any]] = {}
        self.tracker = MemoryTracker()

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        self.hook(name, "start", None)
        with self.tracker.stage(name) as record:
            result = fn()
            release_memory()  # what the stage freed goes back to the system before the next one starts
        self.records[name] = record.to_json()
        self.hook(name, "done", record.seconds)
        return result


def compile_model(model: str | ModelBundle, out_dir: Path | str, options: CompileOptions | None = None, on_stage: StageHook | None = None) -> dict:
    """Run every stage on `model` (a MODEL spec or a bundle); write artifacts and report.json/html to `out_dir`.

    Returns the report (also written as report.json). A numerics failure is recorded in the
    report (`validation.passed` false); errors in any stage raise and leave `out_dir` untouched.
    """
    options = options or CompileOptions()
    out_dir = Path(out_dir)
    backend = get_backend(options.backend)  # fail fast on a bad backend name
    stages = _Stages(on_stage)
    with staged_directory(out_dir) as work, tracking(stages.tracker):
        bundle = model if isinstance(model, ModelBundle) else stages.run("load", lambda: load_model(model))
        if options.data is not None and options.data.path is not None:
            bundle = stages.run("data", lambda: attach_task(bundle, options.data))
        if options.kv_cache and bundle.cache is None:
            bundle = with_kv_cache(bundle)
        plan = _plan_for(options.plan, bundle)
        passes = resolve_targets((plan.pass_specs(Path(options.plan).parent) if plan else []) + options.passes, backend.pass_target)
        check_pipeline(passes)  # before the export: a bad option or order fails fast
        exported = stages.run("export", lambda: export_model(bundle, work / "model.onnx", opset=options.opset, debug=options.debug))
        release_weights(bundle.module)  # the torch weights export read leave memory until validation runs them
        rewritten = stages.run("rewrite", lambda: rewrite_model(exported.model_path, work / "model.opt.onnx", passes))
        built = stages.run("build", lambda: backend.build(rewritten.model_path, work / f"model{backend.suffix}", options.build))
        candidate = dataclasses.replace(built.candidate, layer_model=rewritten.model_path)
        edits = reference_edits(rewritten.passes)  # what the approximate passes imply for the torch reference
        # draft heads built in (pass draft-heads): the reference computes the torch heads too, before any edit (quantized heads)
        heads = built.candidate.manifest.draft_heads if built.candidate.manifest else None
        validate_options = ValidateOptions(
            # MatMulNBits with int8 activations (accuracy level 4) is judged by its own tolerance (validate/tolerance.py)
            precision="int8" if options.build.precision == "fp32" and any(e.precision == "int8" for e in edits) else options.build.precision,
            atol=options.atol,
            rtol=options.rtol,
            seed=options.seed,
            layers=True,
            task=bundle.task is not None,
            task_limit=options.task_limit,
            task_reference=bundle,
            **_budget(options, plan),
        )
        validation = stages.run("validate", lambda: validate(_edited_reference(bundle, heads, edits), candidate, validate_options))
        stages.records["rewrite"].update(rewritten.to_json())
        stages.records["build"].update({"backend": built.backend, "executed": candidate.executed, **built.info})
        artifacts = {
            **_tokenizer_files(bundle, work),
            "onnx": exported.model_path,
            "manifest": exported.manifest_path,
            "rewritten_onnx": rewritten.model_path,
            **{f"build_{k}": v for k, v in built.artifacts.items()},
            "report_json": work / "report.json",
            "report_html": work / "report.html",
        }
        if plan is not None:
            artifacts["plan"] = plan.save(work / "plan.json")
            for name, file in plan.artifacts.items():  # the plan's weights (sparse-mlp's predictors) travel with it
                artifacts[f"plan:{name}"] = work / file
                shutil.copyfile(Path(options.plan).parent / file, work / file)
        validation_json = validation.to_json()
        validation_json["candidate"] = _final(validation.candidate, work, out_dir)
        if edits:
            validation_json["reference_edits"] = [edit.note for edit in edits]
        if validation.layers and validation.layers["model"]:
            validation_json["layers"]["model"] = _final(validation.layers["model"], work, out_dir)
        report = {
            "model": bundle.source,
            "kind": bundle.kind,
            "parameters": bundle.num_parameters,
            **({"kv_cache": _cache(bundle, built.candidate.manifest)} if bundle.cache is not None else {}),
            "passed": validation.passed,
            "stages": stages.records,
            "memory": memory_summary(stages.records, weight_bytes(bundle.module)),
            "artifacts": {k: _final(v, work, out_dir) for k, v in artifacts.items()},
            "validation": validation_json,
            "environment": _environment(),
        }
        if plan is not None:
            report["plan"] = {"source": str(options.plan), "analyses": list(plan.analyses), "passes": [str(p) for p in plan.pass_specs()],
                              "calibration": plan.calibration, "budget": plan.budget, "predicted": plan.predicted, "tables": plan.tables}
        write_json(work / "report.json", report)
        write_text(work / "report.html", render_html(report, validation_section(report["validation"])))
    return report


def _edited_reference(bundle: ModelBundle, heads: dict | None, edits: list) -> ModelBundle:
    """The torch reference validation compares with: `bundle` with the draft heads the artifact
    lists and every reference edit applied (a step of the validate stage, so its memory counts there)."""
    reference = heads_reference(bundle, heads, None)
    if not edits:
        return reference
    with step("reference"):
        for edit in edits:
            reference = dataclasses.replace(reference, module=edit.apply(reference.module))
        # An edit reads the original weights to derive its own (int4: every quantized linear's, 1x the weights);
        # they leave memory again until the task metric runs the original (1.1 B int4: validation peaked at 9.4 GB).
        release_weights(bundle.module)
    return reference


def weight_bytes(module) -> int:
    """Bytes of the module's parameters and buffers (each tensor once: tied weights count once)."""
    tensors = {id(t): t for t in (*module.parameters(), *module.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def memory_summary(stages: dict[str, dict], weights: int) -> dict[str, Any]:
    """The run's peak resident memory, the stage it was reached in, and its ratio to the weight bytes."""
    peaks = {name: record["peak_rss_mib"] for name, record in stages.items() if "peak_rss_mib" in record}
    worst = max(peaks, key=peaks.get) if peaks else None
    summary = {"peak_rss_mib": peaks.get(worst), "peak_stage": worst, "weights_mib": round(weights / 2**20, 1)}
    if worst is not None and weights:
        summary["peak_over_weights"] = round(peaks[worst] * 2**20 / weights, 2)
    if any(record.get("peak_is_process_peak") for record in stages.values()):
        summary["note"] = "this system cannot reset the peak between stages: each stage's peak is the process's so far"
    return summary


def _tokenizer_files(bundle: ModelBundle, work: Path) -> dict[str, Path]:
    """A Hugging Face source's tokenizer files (chat template, generation config) copied beside the artifact,
    so `generate`/`serve` find them wherever the artifact goes."""
    from mlpdeploy.runtime.tokenizer import copy_tokenizer_files

    if bundle.kind != "hf" or not Path(bundle.source).is_dir():
        return {}
    return {f"tokenizer:{p.name}": p for p in copy_tokenizer_files(Path(bundle.source), work)}


def _plan_for(path: Path | None, bundle: ModelBundle) -> Plan | None:
    """The plan at `path`, checked to be for `bundle` (its source, and the module scopes it names)."""
    if path is None:
        return None
    plan = load_plan(path)
    plan.check_model(bundle.source, {name for name, _ in bundle.module.named_modules()}, path)
    return plan


def _cache(bundle: ModelBundle, manifest) -> dict:
    """The artifact's KV cache: the built model's (drop-layers may have removed layers'), else the export's."""
    return manifest.cache if manifest is not None and manifest.cache is not None else bundle.cache.to_json()


def _budget(options: CompileOptions, plan: Plan | None) -> dict[str, Any]:
    """The task budget validation checks: the options', else the plan's (what its planner spent)."""
    if options.max_metric_delta is None and plan is not None and plan.budget:
        return {"max_metric_delta": plan.budget["max_delta"], "relative_metric_delta": bool(plan.budget.get("relative"))}
    return {"max_metric_delta": options.max_metric_delta, "relative_metric_delta": options.relative_metric_delta}


def _final(path: Path | str, work: Path, out_dir: Path) -> str:
    """Where a file written in the staging directory ends up."""
    return str(out_dir / Path(path).relative_to(work))


def _environment() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    return {
        "mlpdeploy": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "processor": _cpu_name(),
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
