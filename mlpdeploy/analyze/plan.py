"""plan.json: the contract between analyze and rewrite (schema in docs/analyze.md).

Module scopes (`layers.3.mlp`) are the keys that tie a torch-side measurement to an ONNX
rewrite site. A plan belongs to one model (its source spec); using it on another is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from mlpdeploy.atomic import read_json, staged_files, write_json
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.passes.pipeline import PassSpec, parse_pass_spec

FORMAT_KEY, FORMAT_VERSION = "mlpdeploy_plan", 1


@dataclass
class Plan:
    model: str
    created_with: dict[str, str]
    calibration: dict[str, Any]
    budget: dict[str, Any] | None = None
    analyses: dict[str, Any] = field(default_factory=dict)
    passes: list[dict[str, Any]] = field(default_factory=list)  # {"name", "options", "sites"}
    predicted: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    tables: list[dict[str, Any]] = field(default_factory=list)  # what analyze printed, for report.html
    # Weights planned passes need, by pass name (sparse-mlp's predictors): `save` writes them beside
    # the plan as `<plan>.<pass>.safetensors` and names the file in `artifacts`.
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {
            FORMAT_KEY: FORMAT_VERSION,
            "model": self.model,
            "created_with": self.created_with,
            "calibration": self.calibration,
            "budget": self.budget,
            "analyses": self.analyses,
            "passes": self.passes,
            "predicted": self.predicted,
            "artifacts": self.artifacts,
            "tables": self.tables,
        }

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        for name, arrays in self.arrays.items():
            artifact = path.parent / f"{path.stem}.{name}.safetensors"
            with staged_files(artifact) as tmp:
                save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
                tmp.chmod(0o644)
            self.artifacts[name] = artifact.name
        return write_json(path, self.to_json())

    def pass_specs(self, directory: Path | str | None = None) -> list[PassSpec]:
        """The plan's passes, in order, with their options checked like `--pass` ones and their sites.
        A pass with an artifact (in `directory`, the plan's) gets its path as option `artifact`."""
        specs = []
        for entry in self.passes:
            options = ",".join(f"{k}={v}" for k, v in entry.get("options", {}).items())
            spec = parse_pass_spec(f"{entry['name']}:{options}" if options else entry["name"])
            spec.sites = entry.get("sites")
            if entry["name"] in self.artifacts and directory is not None:
                spec.options["artifact"] = str(Path(directory) / self.artifacts[entry["name"]])
            specs.append(spec)
        return specs

    def sites(self) -> set[str]:
        return {scope for entry in self.passes for scope in (entry.get("sites") or {})}

    def check_model(self, source: str, scopes: set[str] | None, path: Path | str) -> None:
        """A one-line error when this plan was made for another model than `source`, or names
        sites that are not among `scopes` (when the scopes are known)."""
        if self.model != source:
            raise MlpdeployError(
                f"plan {path} was made for model {self.model!r}, not {source!r}; run `mlpdeploy analyze {source} -o PLAN` for it"
            )
        missing = sorted(self.sites() - scopes) if scopes is not None else []
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise MlpdeployError(f"plan {path} names site {missing[0]!r}{more}, which {source} does not have; re-run analyze on it")


def load_plan(path: Path | str) -> Plan:
    """Read a plan.json, with a one-line error when it is missing or not a plan."""
    data = read_json(path, "plan", f"make one with `mlpdeploy analyze MODEL -o {path}`")
    if not isinstance(data, dict) or data.get(FORMAT_KEY) != FORMAT_VERSION:
        found = data.get(FORMAT_KEY) if isinstance(data, dict) else None
        raise MlpdeployError(f"{path} is not an mlpdeploy plan (version {found!r}, expected {FORMAT_KEY}: {FORMAT_VERSION})")
    try:
        return Plan(**{k: v for k, v in data.items() if k not in (FORMAT_KEY, "arrays")})
    except TypeError as exc:
        raise MlpdeployError(f"plan {path} does not follow the plan schema: {exc}") from None


def passes_with_plan(plan_path: Path | str | None, passes: list[PassSpec], onnx_model: Path | str) -> list[PassSpec]:
    """The plan's passes (checked against the ONNX model's manifest source and scopes), then `passes`."""
    if plan_path is None:
        return passes
    from mlpdeploy.model.manifest import find_manifest
    from mlpdeploy.onnx_io import load_ir
    from mlpdeploy.scopes import module_scopes

    plan = load_plan(plan_path)
    manifest = find_manifest(onnx_model)
    if manifest is None:
        raise MlpdeployError(f"{onnx_model} has no manifest beside it, so plan {plan_path} cannot be matched to it; export it with mlpdeploy")
    plan.check_model(manifest.source, module_scopes(load_ir(onnx_model)) if plan.sites() else None, plan_path)
    return plan.pass_specs(Path(plan_path).parent) + passes
