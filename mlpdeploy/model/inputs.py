"""Validation inputs: generated from the manifest's specs with a seed, or loaded from a file
(a Polygraphy inputs JSON or an .npz), and checked against the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlpdeploy.contract import numpy_dtype
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import InputSpec, dim_parts


def resolve_dims(specs: list[InputSpec], dims: dict[str, int] | None = None) -> dict[str, int]:
    """The size of every dynamic dim: `dims` where given, else the first example size seen; a sum
    dim (`past+seq`) is the sum of its parts' sizes unless given itself."""
    sizes = dict(dims or {})
    sums = {}
    for spec in specs:
        for d, example in zip(spec.shape, spec.example_shape):
            if isinstance(d, str) and dim_parts(d):
                sums[d] = example
            elif isinstance(d, str):
                sizes.setdefault(d, example)
    for name, example in sums.items():
        parts = dim_parts(name)
        sizes.setdefault(name, sum(sizes[p] for p in parts) if all(p in sizes for p in parts) else example)
    return sizes


def concrete_shape(spec: InputSpec, dims: dict[str, int]) -> list[int]:
    """The shape of `spec` with its dynamic dims at the sizes `resolve_dims` gave."""
    return [dims[d] if isinstance(d, str) else d for d in spec.shape]


def generate_inputs(specs: list[InputSpec], seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """One feed dict of random inputs following the specs (see InputSpec for the rules)."""
    rng = np.random.default_rng(seed)
    feed = {}
    sizes = resolve_dims(specs, dims)
    for spec in specs:
        shape = concrete_shape(spec, sizes)
        dtype = numpy_dtype(spec.dtype)
        if spec.fill is not None:
            value = np.full(shape, spec.fill)
        elif np.issubdtype(dtype, np.integer) or dtype == np.bool_:
            low = int(spec.low if spec.low is not None else 0)
            high = int(spec.high if spec.high is not None else 2)
            value = rng.integers(low, high, size=shape)
        elif spec.low is not None and spec.high is not None:
            value = rng.uniform(spec.low, spec.high, size=shape)
        else:
            value = rng.standard_normal(size=shape)
        feed[spec.name] = np.asarray(value).astype(dtype)
    return feed


def load_inputs(path: Path | str) -> list[dict[str, np.ndarray]]:
    """Feed dicts from a Polygraphy inputs JSON (a list of feed dicts) or an .npz (one feed dict)."""
    path = Path(path)
    if not path.is_file():
        raise MlpdeployError(f"inputs file {path} not found; pass a Polygraphy inputs .json or an .npz")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return [{k: data[k] for k in data.files}]
        from polygraphy.json import load_json

        loaded = load_json(str(path))
    except Exception as exc:
        raise MlpdeployError(
            f"cannot read inputs from {path} ({type(exc).__name__}); expected a Polygraphy inputs JSON "
            "(polygraphy run --save-inputs) or an .npz of name → array"
        ) from None
    feeds = loaded if isinstance(loaded, list) else [loaded]
    if not feeds or not all(isinstance(f, dict) for f in feeds):
        raise MlpdeployError(f"{path} holds no feed dicts; expected a list of {{input name: array}}")
    return [{k: np.asarray(v) for k, v in f.items()} for f in feeds]


def check_inputs(feed: dict[str, np.ndarray], specs: list[InputSpec], dims: dict[str, list[int]], source: str) -> None:
    """Raise a one-line error if `feed` does not fit the manifest (names, ranks, dims, dtypes)."""
    names = [s.name for s in specs]
    missing = [n for n in names if n not in feed]
    extra = [n for n in feed if n not in names]
    if missing or extra:
        raise MlpdeployError(
            f"{source}: inputs {sorted(feed)} do not match the model's inputs {names}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else "")
        )
    bound: dict[str, int] = {}
    for spec in specs:
        array = feed[spec.name]
        expected = "x".join(str(d) for d in spec.shape)
        if array.ndim != len(spec.shape):
            raise MlpdeployError(f"{source}: input {spec.name} has shape {list(array.shape)}, but the manifest expects [{expected}]")
        for axis, (size, want) in enumerate(zip(array.shape, spec.shape)):
            if isinstance(want, int) and size != want:
                raise MlpdeployError(
                    f"{source}: input {spec.name} has size {size} on axis {axis}, but the manifest fixes it to {want} (shape [{expected}])"
                )
            if isinstance(want, str):
                lo, hi = dims.get(want, [1, 2**31])
                if not lo <= size <= hi:
                    raise MlpdeployError(f"{source}: input {spec.name} dim {want}={size} is outside the exported range [{lo}, {hi}]")
                if bound.setdefault(want, size) != size:
                    raise MlpdeployError(f"{source}: dim {want} is {bound[want]} in one input and {size} in {spec.name}; it must agree")
        want_kind = numpy_dtype(spec.dtype).kind
        if array.dtype.kind != want_kind and not (want_kind in "iu" and array.dtype.kind in "iu"):
            raise MlpdeployError(f"{source}: input {spec.name} has dtype {array.dtype}, but the manifest expects {spec.dtype}")
    for name, size in bound.items():
        parts = dim_parts(name)
        if parts and all(p in bound for p in parts) and size != sum(bound[p] for p in parts):
            got = " + ".join(f"{p}={bound[p]}" for p in parts)
            raise MlpdeployError(f"{source}: dim {name} is {size}, but it must equal {got} = {sum(bound[p] for p in parts)}")


def cast_to_specs(feed: dict[str, np.ndarray], specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """The feed in the manifest's dtypes and order (after `check_inputs`)."""
    return {s.name: np.ascontiguousarray(feed[s.name].astype(numpy_dtype(s.dtype), copy=False)) for s in specs}
