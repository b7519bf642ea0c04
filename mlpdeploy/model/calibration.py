"""Calibration inputs for any model: a user's file, the model's task, or generated from its specs.

A user's calibration file is an `.npz` (one feed: input name → array) or a Polygraphy inputs
JSON (a list of feeds, `polygraphy run --save-inputs`). Feeds are checked against the
model's input specs and cast to their dtypes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import ModelBundle
from mlpdeploy.model.data import Batch
from mlpdeploy.model.inputs import cast_to_specs, check_inputs, generate_inputs, load_inputs


def load_calibration_file(path: Path | str, specs=None, dim_ranges: dict[str, list[int]] | None = None) -> list[Batch]:
    """Feed dicts from a user's `.npz` (one feed: name → array) or Polygraphy inputs JSON (a list).

    With `specs` (the model's InputSpecs) every feed is checked against them and cast to their dtypes.
    """
    feeds = load_inputs(path)
    for i, feed in enumerate(feeds):
        if not feed:
            raise MlpdeployError(f"{path}: feed {i} holds no arrays; save {{input name: array}} (np.savez(path, input_ids=…))")
        bad = [k for k, v in feed.items() if v.dtype.kind not in "biuf"]
        if bad:
            raise MlpdeployError(f"{path}: inputs {bad} are not numeric arrays; save numbers, one array per input name")
        empty = [k for k, v in feed.items() if v.ndim and v.shape[0] == 0]  # no samples (a past-0 KV cache is fine)
        if empty:
            raise MlpdeployError(f"{path}: input {empty[0]} of feed {i} is empty (shape {list(feed[empty[0]].shape)}); "
                                 "calibration needs at least one sample per input")
        nonfinite = [k for k, v in feed.items() if v.dtype.kind == "f" and not np.isfinite(v).all()]
        if nonfinite:
            v = feed[nonfinite[0]]
            raise MlpdeployError(f"{path}: input {nonfinite[0]} of feed {i} holds {int(np.isnan(v).sum())} NaN and "
                                 f"{int(np.isinf(v).sum())} infinite values; calibration statistics need finite data: clean the file")
        if specs is not None:
            check_inputs(feed, specs, dim_ranges or {}, str(path))
    if specs is not None:
        feeds = [cast_to_specs(feed, specs) for feed in feeds]
    return feeds


@dataclass
class FileData:
    """A user's calibration file as a batch source with the same `calibration_batches` as a Task.

    When every feed has the same shape apart from axis 0, samples are pooled and re-batched
    (shuffled by `seed`); otherwise the feeds are yielded as stored, `batch_size` ignored.
    """

    path: Path
    feeds: list[Batch] = field(repr=False)

    @classmethod
    def load(cls, path: Path | str, specs=None, dim_ranges=None) -> "FileData":
        return cls(Path(path), load_calibration_file(path, specs, dim_ranges))

    def _poolable(self) -> bool:
        """Same names in every feed, one axis-0 size per feed, same trailing shapes across feeds."""
        first = self.feeds[0]
        for feed in self.feeds:
            if feed.keys() != first.keys() or any(v.ndim == 0 for v in feed.values()):
                return False
            if len({v.shape[0] for v in feed.values()}) != 1:
                return False
            if any(v.shape[1:] != first[k].shape[1:] for k, v in feed.items()):
                return False
        return True

    def calibration_batches(self, n: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        if not self._poolable():
            yield from self.feeds[:n]
            return
        pool = {k: np.concatenate([f[k] for f in self.feeds]) for k in self.feeds[0]}
        total = len(next(iter(pool.values())))
        order = np.random.default_rng(seed).permutation(total)
        for i in range(min(n, -(-total // batch_size))):
            idx = order[i * batch_size:(i + 1) * batch_size]
            yield {k: v[idx] for k, v in pool.items()}


def calibration_batches(bundle: ModelBundle, n: int = 8, batch_size: int = 4, seed: int = 0, path: Path | str | None = None) -> list[Batch]:
    """Calibration inputs for `bundle`: from `path` if given, else its task, else generated from its specs."""
    if path is not None:
        source = FileData.load(path, bundle.inputs, bundle.dim_bounds())
        return list(source.calibration_batches(n, batch_size, seed))
    if bundle.task is not None:
        return list(bundle.task.calibration_batches(n, batch_size, seed))
    dims = {name: batch_size for s in bundle.inputs for name in s.dynamic_axes.values() if name == "batch"}
    return [generate_inputs(bundle.inputs, seed=seed + i, dims=dims) for i in range(n)]
