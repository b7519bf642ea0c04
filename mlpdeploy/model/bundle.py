"""ModelBundle: a torch module plus everything needed to export, feed and judge it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from mlpdeploy.dtypes import numpy_dtype_name

if TYPE_CHECKING:
    from mlpdeploy.model.cache_layout import CacheLayout
    from mlpdeploy.model.data import Task

DEFAULT_DIM_RANGE = (1, 4096)


@dataclass
class InputSpec:
    """One model input. `shape` holds ints for static dims and names for dynamic ones.

    Generated data: integer inputs are uniform in [low, high); float inputs are standard
    normal unless low/high are given (then uniform); `fill` (e.g. 1 for an attention mask)
    overrides both.
    """

    name: str
    dtype: str
    shape: list[int | str]
    example_shape: list[int]
    low: float | None = None
    high: float | None = None
    fill: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict) -> "InputSpec":
        return cls(**data)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass
class TrainedMetrics:
    """What a trained zoo checkpoint recorded about itself: its eval metric and the baseline's."""

    metric: str
    value: float
    baseline: float | None = None
    details: dict[str, Any] = field(default_factory=dict)  # eval samples, steps, train seconds, ...

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainedMetrics":
        rest = {k: v for k, v in data.items() if k not in ("metric", "value", "baseline")}
        baseline = data.get("baseline")
        return cls(data["metric"], float(data["value"]), None if baseline is None else float(baseline["value"]), rest)


@dataclass
class ModelBundle:
    """A module in eval mode, example inputs (in forward-argument order) and their specs.

    `dim_ranges` bounds each named dynamic dim for export (default 1..4096).
    `task`: the evaluation task (zoo models); `trained`: the checkpoint's recorded metric;
    `exported_program`: set when the model came from a torch.export `.pt2` (exported as is).
    `cache`: set for a decoder exported with its KV cache (`mlpdeploy.model.kv_cache.with_kv_cache`).
    `output_names` may be empty: export then names the outputs (`default_output_names`).
    `metadata`: free-form provenance (checkpoint and card paths, HF architectures and config).
    """

    module: torch.nn.Module
    example_inputs: dict[str, torch.Tensor]
    inputs: list[InputSpec]
    output_names: list[str]
    source: str
    kind: str
    dim_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    task: Task | None = None
    trained: TrainedMetrics | None = None
    exported_program: torch.export.ExportedProgram | None = None
    cache: CacheLayout | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def dim_range(self, name: str) -> tuple[int, int]:
        return self.dim_ranges.get(name, DEFAULT_DIM_RANGE)

    def dim_bounds(self) -> dict[str, list[int]]:
        """Every dynamic dim of the inputs (and the parts of a sum dim such as `past+seq`) → [min, max]."""
        names = {part for spec in self.inputs for name in spec.dynamic_axes.values() for part in (name, *dim_parts(name))}
        return {name: list(self.dim_range(name)) for name in sorted(names)}

    def resolved_output_names(self, count: int) -> list[str]:
        """The bundle's output names, or the names export gives outputs nobody named."""
        return self.output_names or default_output_names(count)


def dim_parts(name: str) -> list[str]:
    """The dims a sum dim is made of (`past+seq` → ["past", "seq"]); [] for a plain dim."""
    return name.split("+") if "+" in name else []


def default_output_names(count: int) -> list[str]:
    """Names for outputs nobody named: `output`, or `output_0`, `output_1`, ..."""
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def set_eval(module: torch.nn.Module) -> None:
    """Put `module` in eval mode; a torch.export program's module refuses eval() and needs none."""
    try:
        module.eval()
    except NotImplementedError:
        pass


def share_tree(owner: torch.nn.Module, module: torch.nn.Module) -> None:
    """Register `module`'s children, parameters and buffers on `owner` under their own names, so a
    wrapper that calls `module` has the same module paths (`layers.3.mlp`) and state dict."""
    for name, child in module.named_children():
        owner.add_module(name, child)
    for name, param in module.named_parameters(recurse=False):
        owner.register_parameter(name, param)
    for name, buffer in module.named_buffers(recurse=False):
        owner.register_buffer(name, buffer, persistent=name not in module._non_persistent_buffers_set)


def infer_input_specs(example_inputs: dict[str, torch.Tensor], dynamic: dict[str, dict[int, str]] | None = None) -> list[InputSpec]:
    """Input specs for a user model: documented default dynamic axes unless given.

    Defaults: axis 0 of every input is `batch`; axis 1 of an integer input of rank 2
    (token ids, masks) and of a float input of rank 3 ([batch, seq, features]) is `seq`.
    Images (rank 4) and everything else keep their other dims static.
    """
    specs = []
    for name, t in example_inputs.items():
        if dynamic is not None and name in dynamic:
            axes = dict(dynamic[name])
        else:
            axes = {0: "batch"} if t.dim() >= 1 else {}
            is_int = not t.is_floating_point()
            if (is_int and t.dim() == 2) or (not is_int and t.dim() == 3):
                axes[1] = "seq"
        shape = [axes.get(i, int(s)) for i, s in enumerate(t.shape)]
        low = high = None
        if not t.is_floating_point() and t.numel():
            low, high = min(int(t.min()), 0), int(t.max()) + 1
        specs.append(InputSpec(name, numpy_dtype_name(t.dtype), shape, list(t.shape), low, high))
    return specs
