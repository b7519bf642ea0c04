"""Parse `--pass NAME[:key=value,...]` specs and run the pass pipeline on an ONNX model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedFunctionsPass, RemoveUnusedNodesPass, RemoveUnusedOpsetsPass

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.memory import step
from mlpdeploy.passes.base import RewritePass
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


def _convert(text: str, default: Any, key: str, name: str) -> Any:
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if default is None:
            return text
        return type(default)(text)
    except ValueError:
        raise MlpdeployError(f"pass {name}: option {key}={text!r} is not a valid {type(default).__name__}") from None


def parse_pass_spec(text: str) -> PassSpec:
    """Parse `NAME[:key=value,...]`, converting values to the type of each option's default."""
    name, _, rest = text.partition(":")
    name = name.strip()
    cls = pass_class(name)
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise MlpdeployError(f"pass {name}: option {item!r} must be key=value")
        if key not in cls.options:
            known = ", ".join(sorted(cls.options)) or "none"
            raise MlpdeployError(f"pass {name}: unknown option {key!r}; options are: {known}")
        options[key] = _convert(value, cls.options[key], key, name)
    return PassSpec(name, options)


def resolve_targets(specs: list[PassSpec], target: str) -> list[PassSpec]:
    """Passes whose `target` option is `auto` (as planners write it) get the build's target
    family (`ort` or `trt`, the backend's `pass_target`); the specs are copied, not changed."""
    resolved = []
    for spec in specs:
        if "target" in pass_class(spec.name).options and spec.options.get("target", pass_class(spec.name).options["target"]) == "auto":
            spec = PassSpec(spec.name, {**spec.options, "target": target}, spec.sites)
        resolved.append(spec)
    return resolved


def run_pipeline(model: ir.Model, specs: list[PassSpec]) -> dict[str, dict]:
    """Run the passes in order, in place, then remove dead nodes, functions and opsets.

    Returns each pass's report keyed by its spec string.
    """
    reports: dict[str, dict] = {}
    for spec in specs:
        p = pass_class(spec.name)(sites=spec.sites, **spec.options)
        with step(str(spec)):
            p(model)
        reports[str(spec)] = p.report.to_json()
    for cleanup in (RemoveUnusedNodesPass(), RemoveUnusedFunctionsPass(), RemoveUnusedOpsetsPass()):
        cleanup(model)
    return reports
