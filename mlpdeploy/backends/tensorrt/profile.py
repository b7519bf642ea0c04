"""Optimization profiles for the TensorRT backends: derived from the manifest, overridden by `--shapes`.

One profile per engine. Every input axis gets a (min, opt, max) triple:

* static axes: their size, three times;
* a dynamic axis named in the manifest beside the model (e.g. `batch`, `seq`):
  min = the dim's lower bound in the manifest's `dims` (the export's range, usually 1),
  opt = the axis's size in the input's example shape (clamped into the range),
  max = the dim's upper bound, capped at max(opt, DEFAULT_MAX_DIM). The cap (256) keeps
  activation memory and build time small; raise it with `--shapes`;
* a dynamic axis with no manifest (or no name): min 1, opt 1, max DEFAULT_MAX_DIM.

`--shapes NAME=MIN:OPT:MAX` overrides, one flag per NAME:

* NAME is an input name: MIN, OPT and MAX are full shapes, dims joined by `x`
  (`input_ids=1x1:2x16:8x512`); static axes must keep their size;
* NAME is a dim name: MIN, OPT and MAX are single ints (`seq=1:64:1024`) and apply to every
  axis carrying that name, in every input.

Input names are matched before dim names. Parsed overrides are kept in
`BuildOptions.shapes` as name -> (min, opt, max) lists (one element each for a dim name).
"""

from __future__ import annotations

from typing import Iterable

import onnx_ir as ir

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.manifest import Manifest

DEFAULT_MAX_DIM = 256

Triple = tuple[list[int], list[int], list[int]]


def parse_shapes(texts: Iterable[str]) -> dict[str, Triple]:
    """Parse `NAME=MIN:OPT:MAX` strings (each MIN/OPT/MAX an int or `AxBxC`), with one-line errors."""
    shapes: dict[str, Triple] = {}
    for text in texts:
        name, eq, spec = text.partition("=")
        name = name.strip()
        parts = spec.split(":")
        if not eq or not name or len(parts) != 3:
            raise MlpdeployError(f"--shapes {text!r} must be NAME=MIN:OPT:MAX, e.g. batch=1:4:32 or input_ids=1x1:2x16:8x512")
        if name in shapes:
            raise MlpdeployError(f"--shapes names {name!r} twice; give each input or dim once")
        try:
            lo, opt, hi = ([int(d) for d in p.strip().lower().split("x")] for p in parts)
        except ValueError:
            raise MlpdeployError(f"--shapes {text!r}: sizes must be integers (dims of a shape joined by 'x')") from None
        if not len(lo) == len(opt) == len(hi):
            raise MlpdeployError(f"--shapes {text!r}: MIN, OPT and MAX must have the same rank ({len(lo)}, {len(opt)}, {len(hi)})")
        _check_order(name, lo, opt, hi)
        shapes[name] = (lo, opt, hi)
    return shapes


def _check_order(name: str, lo: list[int], opt: list[int], hi: list[int]) -> None:
    for a, (x, y, z) in enumerate(zip(lo, opt, hi)):
        if x < 1 or not x <= y <= z:
            where = f" axis {a}" if len(lo) > 1 else ""
            raise MlpdeployError(f"shape range for {name}{where} is {x}:{y}:{z}; it needs 1 <= min <= opt <= max")


def derive_profile(model: ir.Model, manifest: Manifest | None, overrides: dict[str, Triple] | None = None) -> dict[str, Triple]:
    """Input name -> (min, opt, max) shapes for every graph input (rules in the module docstring)."""
    overrides = dict(overrides or {})
    inputs = [v for v in model.graph.inputs]
    input_names = {v.name for v in inputs}
    specs = {s.name: s for s in manifest.inputs} if manifest else {}
    axis_names = {v.name: _axis_names(v, specs.get(v.name)) for v in inputs}
    dim_names = {n for names in axis_names.values() for n in names if n}
    unknown = sorted(set(overrides) - input_names - dim_names)
    if unknown:
        raise MlpdeployError(
            f"--shapes names unknown {', '.join(unknown)}; inputs are {', '.join(sorted(input_names)) or 'none'}"
            f" and dynamic dims are {', '.join(sorted(dim_names)) or 'none'}"
        )
    dim_overrides = {k: v for k, v in overrides.items() if k not in input_names}
    for name, (lo, _opt, _hi) in dim_overrides.items():
        if len(lo) != 1:
            raise MlpdeployError(f"--shapes {name} is a dim name: give single sizes, e.g. {name}=1:8:64")
    profile = {}
    for value in inputs:
        spec = specs.get(value.name)
        if value.name in overrides:
            profile[value.name] = _check_input_override(value, overrides[value.name])
            continue
        triple: Triple = ([], [], [])
        for axis, dim in enumerate(value.shape or []):
            if isinstance(dim, int):
                sizes = (dim, dim, dim)
            else:
                sizes = _dim_sizes(axis_names[value.name][axis], axis, spec, manifest, dim_overrides)
            for lst, size in zip(triple, sizes):
                lst.append(size)
        profile[value.name] = triple
    _check_shared_dims(profile, axis_names)
    return profile


def _axis_names(value: ir.Value, spec) -> list[str | None]:
    """Per axis: the dim's name (manifest first, then the ONNX dim_param), None if static or unnamed."""
    names: list[str | None] = []
    for axis, dim in enumerate(value.shape or []):
        if isinstance(dim, int):
            names.append(None)
        elif spec is not None and axis < len(spec.shape) and isinstance(spec.shape[axis], str):
            names.append(spec.shape[axis])
        else:
            names.append(dim.value if isinstance(dim, ir.SymbolicDim) and dim.value else None)
    return names


def _dim_sizes(name, axis, spec, manifest, dim_overrides) -> tuple[int, int, int]:
    if name in dim_overrides:
        lo, opt, hi = dim_overrides[name]
        return lo[0], opt[0], hi[0]
    if spec is not None and axis < len(spec.shape) and isinstance(spec.shape[axis], int):
        size = spec.shape[axis]  # static in the manifest although symbolic in the ONNX graph
        return size, size, size
    if manifest is None or spec is None or name not in manifest.dims:
        return 1, 1, DEFAULT_MAX_DIM
    lo, hi = manifest.dims[name]
    lo = max(1, int(lo))
    opt = min(max(int(spec.example_shape[axis]), lo), int(hi))
    return lo, opt, min(int(hi), max(opt, DEFAULT_MAX_DIM))


def _check_input_override(value: ir.Value, triple: Triple) -> Triple:
    shape = list(value.shape or [])
    lo, opt, hi = triple
    if len(lo) != len(shape):
        raise MlpdeployError(f"--shapes {value.name} has rank {len(lo)}, but input {value.name} has rank {len(shape)} ({_show(shape)})")
    for axis, dim in enumerate(shape):
        if isinstance(dim, int) and not lo[axis] == opt[axis] == hi[axis] == dim:
            raise MlpdeployError(
                f"--shapes {value.name}: axis {axis} is static ({dim}) in the model ({_show(shape)}), but was given "
                f"{lo[axis]}:{opt[axis]}:{hi[axis]}"
            )
    return [*lo], [*opt], [*hi]


def _check_shared_dims(profile: dict[str, Triple], axis_names: dict[str, list[str | None]]) -> None:
    """A dim shared by several inputs (e.g. `batch`) must get the same range everywhere."""
    seen: dict[str, tuple[str, tuple[int, int, int]]] = {}
    for input_name, names in axis_names.items():
        for axis, name in enumerate(names):
            if name is None:
                continue
            sizes = tuple(lst[axis] for lst in profile[input_name])
            if name in seen and seen[name][1] != sizes:
                other, theirs = seen[name]
                raise MlpdeployError(
                    f"dim {name} is {':'.join(map(str, theirs))} in input {other} but {':'.join(map(str, sizes))} in input "
                    f"{input_name}; give both the same range in --shapes, or override the dim itself ({name}=MIN:OPT:MAX)"
                )
            seen.setdefault(name, (input_name, sizes))


def _show(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def profile_to_json(profile: dict[str, Triple]) -> dict[str, dict[str, list[int]]]:
    return {name: {"min": lo, "opt": opt, "max": hi} for name, (lo, opt, hi) in profile.items()}
