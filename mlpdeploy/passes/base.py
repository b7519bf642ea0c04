"""The contract every rewrite pass follows.

A pass is a class with one file of its own, registered by one line in `registry.py`. It declares,
as data on the class:

* `name`, `description` (one line);
* `options`: name → `Option(default, help, choices=, minimum=)` — typed, checked when the pass is
  made (from `--pass NAME:key=value`, a plan's JSON or Python), printed by `mlpdeploy passes`;
* `phase`: where it may run in a pipeline (`PHASES`, in order): the pipeline refuses a pass
  after one of a later phase, and the fuzzer draws its orders from the same data;
* `reference`: one line on what torch model the rewritten graph equals (`exact` by default), and
  `reference_edit(report)`: the edit of the torch reference its rewrite implies (None for an
  exact pass, or one whose edit travels in the manifest as `module_overrides`), so `compile`
  validates against it without knowing which pass ran.

and implements `rewrite(model) -> PassReport`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx_ir as ir

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.passes.options import Option

# Where a pass may run, in order. `rewrite`: mlpdeploy's graph rewrites, in any order among
# themselves; `precision`: a whole-graph type conversion (it must see every op it converts, and
# nothing after it may assume float32); `lowering`: a backend's fused contrib ops (ONNX Runtime's),
# which no other pass reads, so they come last, as a build applies them.
PHASES = ("rewrite", "precision", "lowering")


@dataclass(frozen=True)
class ReferenceEdit:
    """What the torch reference must become for the rewritten graph to equal it: `apply(module)`
    gives the edited module (a copy; the original is the task metric's reference), `note` says so
    in one line for the report, `precision` is the rule the comparison judges by when even the
    edited reference cannot be bit-faithful ("int8": int8 activations, mlpdeploy.validate.tolerance;
    None: the build's precision)."""

    apply: Callable[[Any], Any]
    note: str
    precision: str | None = None


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
    """An in-place onnx_ir pass with a registered name and typed options (module docstring).

    A pass run from a plan gets `sites` (module scope → settings) and rewrites only those
    (`site_settings`). `config` holds every option, checked.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    options: ClassVar[dict[str, Option]] = {}
    phase: ClassVar[str] = "rewrite"
    reference: ClassVar[str] = "exact (the graph computes what the torch model does)"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        bad = [k for k, v in cls.options.items() if not isinstance(v, Option)]
        if bad or cls.phase not in PHASES:
            raise TypeError(f"pass {cls.__name__}: options are Option(...) declarations ({bad} are not) and phase one of {PHASES}")

    def __init__(self, sites: dict[str, dict[str, Any]] | None = None, **options: Any):
        super().__init__()
        self.config = self.checked_options(options)
        self.sites = sites
        self.report = PassReport(self.name)

    @classmethod
    def checked_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Every option: the given ones checked against their declaration, the rest at their
        defaults; a one-line error for an unknown option or a value it does not take."""
        unknown = sorted(set(given) - set(cls.options))
        if unknown:
            known = ", ".join(cls.options) or "none"
            raise MlpdeployError(f"pass {cls.name}: unknown option {unknown[0]!r}; options are: {known}")
        return {key: option.check(given[key], f"pass {cls.name}: {key}") if key in given else option.default
                for key, option in cls.options.items()}

    @classmethod
    def reference_edit(cls, report: dict) -> ReferenceEdit | None:
        """The torch-side edit this pass's rewrite (as its `report` says) implies; None when the
        graph computes what the unedited model does. Edits that travel with the artifact (the
        report's `module_overrides`, applied by validation from the manifest) are not repeated here."""
        return None

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
