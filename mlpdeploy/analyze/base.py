"""The contract every analysis follows (one analysis per file, registered in `registry.py`)."""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mlpdeploy.model.bundle import ModelBundle

if TYPE_CHECKING:
    from mlpdeploy.analyze.scoring import Ledger


@dataclass
class AnalysisContext:
    """What an analysis measures on: the torch model and calibration feeds (never the eval split)."""

    bundle: ModelBundle
    batches: list[dict[str, np.ndarray]]
    seed: int = 0
    max_metric_delta: float | None = None  # the budget planners spend: metric units, or a fraction with relative_budget
    relative_budget: bool = False
    eval_samples: int | None = 128  # held-out (eval split) samples a planner judges its choices on (None: all)
    labeled: bool = False  # the batches are the task's calibration samples (the task can label them)
    calibration: Path | str | None = None  # the user's calibration file, if any
    backend: str = "onnxruntime"  # the build backend a planner plans for (what its choices cost there)
    ledger: Ledger | None = None  # with a budget: the held-out scorer and what earlier planners spent (scoring.Ledger)
    share: float = 1.0  # the part of what is left of the budget this planner may spend

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.bundle.inputs]

    def applied(self):
        """A context with the earlier planners' edits in force on the torch model (none without a budget)."""
        return self.ledger.applied(self.bundle.module) if self.ledger is not None else contextlib.nullcontext()


@dataclass
class Table:
    """A result table: printed by the CLI, drawn in report.html."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    heatmap: dict[str, Any] | None = None  # {"rows", "columns", "values" [row][col], "label"}: drawn in report.html
    # A curve report.html draws under the table: {"x": label, "y": label, "points": [[x, y, ok], ...],
    # "limit": y the budget allows (optional)}; points with ok false are drawn as rejected tries.
    chart: dict[str, Any] | None = None

    def to_json(self) -> dict:
        data = {"title": self.title, "columns": self.columns, "rows": self.rows}
        for key in ("heatmap", "chart"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data


@dataclass
class AnalysisResult:
    """An analysis' measurements (stored under `analyses.<name>` in plan.json), the rewrites it
    proposes (`passes`, in plan.json's form) and what it predicts they do."""

    data: dict[str, Any]
    table: Table
    passes: list[dict[str, Any]] = field(default_factory=list)
    predicted: dict[str, Any] = field(default_factory=dict)
    # Weights a planned pass needs (e.g. sparse-mlp's predictors, "<scope>.p_a"): saved beside plan.json.
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    extra_tables: list[Table] = field(default_factory=list)  # further tables after `table` (e.g. a plan)


class Analysis(abc.ABC):
    """A calibration-time measurement keyed by module scope.

    Subclasses set `name` (also its CLI flag, `--<name>`), `description`, and `takes` (None for
    a plain flag, else the metavar of the flag's value, e.g. "FORMATS"), and implement `run`.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    takes: ClassVar[str | None] = None
    plans: ClassVar[bool] = False  # spends the budget (--max-metric-delta) when one is given

    def __init__(self, value: str | None = None):
        self.value = value

    @abc.abstractmethod
    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        """Measure on `ctx.batches`; leave the model as it was."""
