"""`self:PLAN`: the drafter is the model itself minus the layers a drop-layers plan removes
(LayerSkip / Draft & Verify), built from the artifact's own rewritten graph.

The artifact must be a `compile` output directory: its rewritten graph (`model.opt.onnx`, every
pass of the build already applied, e.g. int4 weights) gets the plan's drop-layers passes and is
built with the backend settings the artifact was built with. The result is kept in the cache
directory ($MLPDEPLOY_CACHE_DIR or ~/.cache/mlpdeploy, `drafters/`) under a key of the graph
and the plan, written atomically, so the next run loads it at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.engine import IDLE_BETWEEN_RUNS, Engine


def cache_root() -> Path:
    return Path(os.environ.get("MLPDEPLOY_CACHE_DIR") or Path.home() / ".cache" / "mlpdeploy") / "drafters"


def build_self_drafter(target: Engine, plan: Path, threads: int | None = None, root: Path | None = None) -> Engine:
    """The drafter of `self:PLAN` for `target` (built once, then loaded from the cache)."""
    from mlpdeploy.analyze.plan import load_plan

    directory = target.path.parent
    report_path = directory / "report.json"
    if not report_path.is_file():
        raise MlpdeployError(f"--speculative self:{plan}: {target.path} is not in a `mlpdeploy compile` output directory; "
                             "self-speculation rebuilds the compiled graph without the plan's layers")
    report = json.loads(report_path.read_text())
    rewritten = directory / Path(report.get("artifacts", {}).get("rewritten_onnx", "model.opt.onnx")).name
    if not rewritten.is_file():
        raise MlpdeployError(f"--speculative self:{plan}: {directory} has no rewritten graph ({rewritten.name}); re-run `mlpdeploy compile`")
    drops = [spec for spec in load_plan(plan).pass_specs(plan.parent) if spec.name == "drop-layers"]
    if not drops:
        raise MlpdeployError(f"--speculative self:{plan}: the plan drops no layers; make one with `mlpdeploy analyze MODEL --redundancy "
                             "--max-metric-delta D -o PLAN`")
    build = report.get("stages", {}).get("build", {})
    if build.get("backend", "onnxruntime") != "onnxruntime":
        raise MlpdeployError(f"--speculative self:{plan}: {target.path} was built for {build['backend']}; speculative decoding runs ONNX Runtime builds")
    key = _key(rewritten, plan, build)
    out = (root or cache_root()) / key
    model = out / f"draft{_suffix(build)}"
    if not model.is_file():
        _build(rewritten, plan, build, target.manifest.last("build"), out)
    return Engine.load(model, threads=threads, session_entries=IDLE_BETWEEN_RUNS)


def _key(rewritten: Path, plan: Path, build: dict) -> str:
    digest = hashlib.sha256()
    stat = rewritten.stat()
    digest.update(f"{rewritten.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(plan.read_bytes())
    digest.update(json.dumps({k: build.get(k) for k in ("backend", "fusions", "ort_kernels")}, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def _suffix(build: dict) -> str:
    from mlpdeploy.backends import get_backend

    return get_backend(build.get("backend", "onnxruntime")).suffix


def _build(rewritten: Path, plan: Path, build: dict, built_entry: dict, out: Path) -> None:
    """Rewrite `rewritten` with the plan's drop-layers passes and build it as the artifact was
    (ONNX Runtime: the same device, optimization level, fusions and kernels)."""
    from mlpdeploy.analyze.plan import passes_with_plan
    from mlpdeploy.atomic import staged_directory
    from mlpdeploy.backends import get_backend
    from mlpdeploy.passes.rewrite import rewrite_model

    backend = get_backend(build.get("backend", "onnxruntime"))
    providers = (build.get("session") or {}).get("providers", ["CPUExecutionProvider"])
    options = backend.Options(device="cuda" if "CUDAExecutionProvider" in providers else "cpu", opt_level=built_entry.get("opt_level", "all"),
                              fusions="fusions" in build, kernels="ort_kernels" in build)
    drops = [spec for spec in passes_with_plan(plan, [], rewritten) if spec.name == "drop-layers"]
    with staged_directory(out) as work:
        result = rewrite_model(rewritten, work / "draft.opt.onnx", drops)
        if not any(report.get("rewritten") for report in result.passes):
            raise MlpdeployError(f"--speculative self:{plan}: the plan's drop-layers sites were not found in {rewritten}")
        backend.build(result.model_path, work / f"draft{backend.suffix}", options)
