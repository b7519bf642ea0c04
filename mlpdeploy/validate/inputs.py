"""Validation inputs: what reference and candidate both run on.

In order of preference:

1. a file the user gave (`--inputs`: a Polygraphy inputs JSON or an .npz), as it is;
2. real samples of the task — the zoo model's own, or the one `--data` builds: the first
   held-out windows (or images) of its eval split, token windows cut to `seq` tokens;
3. generated from the manifest's specs (random token ids, standard-normal floats), and the
   report says so.

A decoder exported with its KV cache (`past_key_values.*` inputs) is fed twice: a *prefill* of
a prefix with an empty cache, and a *decode* step of the next token whose past is what the
reference computed on that prefix — the cache a real prefill produces, never random tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import InputSpec
from mlpdeploy.model.inputs import cast_to_specs, check_inputs, generate_inputs, load_inputs, resolve_dims
from mlpdeploy.model.kv_cache import CacheLayout, prefill_feed

SEQ = 64  # tokens per validation window (a cached decoder: its prefix), unless --dim seq / past says otherwise
DECODE_TOKENS = 1  # tokens of the decode step after the prefix (--dim seq with a KV cache)

Feed = dict[str, np.ndarray]
RunReference = Callable[[Feed], dict[str, np.ndarray]]


@dataclass
class ValidationInputs:
    """The feeds, their names (`prefill`, `decode`, `feed 0`, ...) and where they came from, in words."""

    feeds: list[Feed]
    names: list[str | None]
    source: str
    generated: bool = False

    def to_json(self) -> dict:
        feeds = [{"name": name, "shapes": {k: list(v.shape) for k, v in feed.items()}} for name, feed in zip(self.names, self.feeds)]
        return {"source": self.source, "generated": self.generated, "feeds": feeds}


def validation_inputs(specs: list[InputSpec], dim_ranges: dict[str, list[int]], *, path=None, task=None, cache: CacheLayout | None = None,
                      run_reference: RunReference | None = None, dims: dict[str, int] | None = None, seed: int = 0) -> ValidationInputs:
    """The feeds for one validation (see the module docstring): from the inputs file at `path`,
    else `task`'s held-out samples, else generated with `seed`; `dims` sets batch, seq and (a cached
    decoder) past. `run_reference(feed) → outputs` computes the past of a cached decoder's decode step."""
    dims = dict(dims or {})
    if path is not None:
        feeds = load_inputs(path)
        for feed in feeds:
            check_inputs(feed, specs, dim_ranges, str(path))
        names = [None] if len(feeds) == 1 else [f"feed {i}" for i in range(len(feeds))]
        return ValidationInputs([cast_to_specs(f, specs) for f in feeds], names, f"inputs file {path}")
    samples, why_not = _task_samples(task, specs, dims) if task is not None else (None, "no task or --data")
    if cache is not None and _is_cached(specs, cache):
        return _cached_inputs(specs, dim_ranges, cache, run_reference, samples, dims, seed, getattr(task, "name", None), why_not)
    if samples is not None:
        feed = _complete(samples, specs, dims.get("seq", SEQ), seed)
        check_inputs(feed, specs, dim_ranges, "task samples")
        count = len(next(iter(samples.values())))
        return ValidationInputs([cast_to_specs(feed, specs)], [None], f"{count} held-out samples of {task.name}")
    feed = generate_inputs(specs, seed=seed, dims=dims)
    check_inputs(feed, specs, dim_ranges, "generated inputs")
    return ValidationInputs([cast_to_specs(feed, specs)], [None], f"generated from the manifest (seed {seed}; {why_not})", generated=True)


def _is_cached(specs: list[InputSpec], cache: CacheLayout) -> bool:
    names = {s.name for s in specs}
    return "input_ids" in names and all(set(cache.input_names(layer)) <= names for layer in cache.layers)


def _task_samples(task, specs: list[InputSpec], dims: dict[str, int]) -> tuple[Feed | None, str | None]:
    """The first `batch` held-out samples of `task` (token windows cut to `seq`), or (None, why not)."""
    by_name = {s.name: s for s in specs}
    if task.input_name not in by_name:
        return None, f"the task {task.name} feeds {task.input_name}, which the model has no input for"
    batch = dims.get("batch") or _static(by_name[task.input_name], 0) or resolve_dims(specs).get("batch", 2)
    first = next(iter(task.eval_batches(batch, limit=batch)), None)
    if first is None:
        return None, f"the task {task.name} has no held-out samples"
    inputs, _ = task.split_batch(first)
    return {k: np.asarray(v) for k, v in inputs.items() if k in by_name}, None


def _static(spec: InputSpec, axis: int) -> int | None:
    return spec.shape[axis] if len(spec.shape) > axis and isinstance(spec.shape[axis], int) else None


def _cut(feed: Feed, specs: list[InputSpec], dim: str, size: int) -> Feed:
    """`feed` with every axis named `dim` in the specs cut to its first `size` entries."""
    by_name = {s.name: s for s in specs}
    out = {}
    for name, array in feed.items():
        spec = by_name.get(name)
        for axis, d in enumerate(spec.shape if spec else []):
            if d == dim and array.ndim > axis:
                array = np.take(array, np.arange(min(size, array.shape[axis])), axis=axis)
        out[name] = array
    return out


def _complete(samples: Feed, specs: list[InputSpec], seq: int, seed: int) -> Feed:
    """The task's arrays, token windows cut to `seq`, plus generated values for any other input
    (an attention mask of ones, ...) at the same dim sizes."""
    ids_spec = next((s for s in specs if s.name in samples and "seq" in s.shape), None)
    if ids_spec is not None:
        seq_len = samples[ids_spec.name].shape[ids_spec.shape.index("seq")]
        samples = _cut(samples, specs, "seq", min(seq_len, seq))
    sizes = {}
    for spec in specs:
        if spec.name in samples:
            sizes.update({d: n for d, n in zip(spec.shape, samples[spec.name].shape) if isinstance(d, str)})
    rest = [s for s in specs if s.name not in samples]
    return {**samples, **(generate_inputs(rest, seed=seed, dims=sizes) if rest else {})}


def _cached_inputs(specs, dim_ranges, cache: CacheLayout, run_reference: RunReference | None, samples: Feed | None,
                   dims: dict[str, int], seed: int, task_name: str | None, why_not: str | None) -> ValidationInputs:
    """A prefill of `past` tokens, then a decode step of `seq` tokens on the reference's own cache."""
    if run_reference is None:
        raise MlpdeployError("a cached decoder's validation needs the reference to compute its past; none was given")
    ids_spec = next(s for s in specs if s.name == "input_ids")
    limit = dim_ranges.get("past+seq", dim_ranges.get("seq", [1, 4096]))[1]
    step = dims.get("seq", DECODE_TOKENS)
    if samples is not None and "input_ids" in samples:
        ids = np.asarray(samples["input_ids"], np.int64)
        if dims.get("batch"):
            ids = ids[: dims["batch"]]
        prefix = min(dims.get("past", SEQ), ids.shape[1] - step, limit - step)
        source = f"{len(ids)} held-out windows of {task_name}"
        generated = False
    else:
        batch = dims.get("batch") or resolve_dims(specs).get("batch", 2)
        prefix = min(dims.get("past", SEQ), limit - step)
        low, high = int(ids_spec.low or 0), int(ids_spec.high or 2)
        ids = np.random.default_rng(seed).integers(low, high, size=(batch, prefix + step), dtype=np.int64)
        source = f"{batch} windows of random token ids (seed {seed}; {why_not})"
        generated = True
    if prefix < 1:
        raise MlpdeployError(f"validation windows of {ids.shape[1]} tokens are too short for a prefill and a decode step of {step}; "
                             "give longer samples or a smaller --dim seq")
    prefill = prefill_feed(ids[:, :prefix], cache)
    check_inputs(prefill, specs, dim_ranges, "prefill inputs")
    prefill = cast_to_specs(prefill, specs)
    outputs = run_reference(prefill)  # the same feed object validation runs: a Remembered reference runs it once
    decode = {"input_ids": ids[:, prefix:prefix + step], "attention_mask": np.ones((ids.shape[0], prefix + step), np.int64)}
    if cache.position_ids:
        decode["position_ids"] = np.broadcast_to(np.arange(prefix, prefix + step, dtype=np.int64), (ids.shape[0], step)).copy()
    for layer in cache.layers:
        for past, present in zip(cache.input_names(layer), cache.output_names(layer)):
            if present not in outputs:
                raise MlpdeployError(f"the reference returned no {present} for the decode step's past; its outputs are {', '.join(outputs)}")
            decode[past] = np.asarray(outputs[present])
    check_inputs(decode, specs, dim_ranges, "decode inputs")
    feeds = [prefill, cast_to_specs(decode, specs)]
    source += f": a prefill of {prefix} tokens, then a decode step of {step} on the KV cache the reference computed in that prefill"
    return ValidationInputs(feeds, ["prefill", "decode"], source, generated=generated)
