"""The contract every rewrite pass follows."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx_ir as ir


@dataclass
class PassReport:
    """What a pass did: how many sites it rewrote, and why candidate sites were skipped."""

    name: str
    rewritten: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # site -> reason the check failed
    details: dict[str, Any] = field(default_factory=dict)
    # Graph inputs and outputs the pass removed (e.g. the KV cache of a dropped attention layer):
    # `rewrite_model` drops them from the derived manifest, whose cache then lists only the
    # layers that keep theirs.
    removed_inputs: list[str] = field(default_factory=list)
    removed_outputs: list[str] = field(default_factory=list)
    # An approximate pass that is exact against an edited torch model says how: module path →
    # "zero" (its output becomes zeros) | "identity" (it gives back its input) | a dict (sparse-mlp:
    # the MLP computes only selected neurons, mlpdeploy.model.sparsity). `rewrite_model`
    # records them in the manifest; validation applies them to its torch reference
    # (mlpdeploy.model.overrides) and judges the task metric against the unedited model.
    module_overrides: dict[str, str | dict] = field(default_factory=dict)
    # Graph outputs the pass added ({"name", "dtype", "shape"}, as the manifest lists outputs) and
    # manifest entries it sets (draft-heads: `draft_heads`): `rewrite_model` records both.
    added_outputs: list[dict[str, Any]] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        changes = {"removed_inputs": self.removed_inputs, "removed_outputs": self.removed_outputs, "module_overrides": self.module_overrides,
                   "added_outputs": self.added_outputs, "manifest": self.manifest}
        return {"rewritten": self.rewritten, "skipped": self.skipped, **self.details, **{k: v for k, v in changes.items() if v}}


class RewritePass(ir.passes.InPlacePass):
    """An in-place onnx_ir pass with a registered name and typed options.

    Subclasses set `name`, `description` and `options` (name -> default value; the type of
    the default is the type a `--pass NAME:key=value` string is converted to), and implement
    `rewrite(model) -> PassReport`. A pass run from a plan gets `sites` (module scope → settings)
    and rewrites only those (`site_settings`).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}

    def __init__(self, sites: dict[str, dict[str, Any]] | None = None, **options: Any):
        super().__init__()
        self.config = {**self.options, **options}
        self.sites = sites
        self.report = PassReport(self.name)

    def site_settings(self, scope: str) -> dict[str, Any] | None:
        """Per-site settings for the module at `scope`: {} when every site is wanted, None when
        a plan named sites and this is not one of them."""
        if self.sites is None:
            return {}
        return self.sites.get(scope)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report = self.rewrite(model)
        return ir.passes.PassResult(model, modified=self.report.rewritten > 0)

    @abc.abstractmethod
    def rewrite(self, model: ir.Model) -> PassReport:
        """Rewrite `model` in place; return what was rewritten and why other sites were skipped."""
