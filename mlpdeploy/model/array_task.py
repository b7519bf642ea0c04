"""A task on a user's arrays (`--data FILE.npz` or a Polygraphy inputs JSON): calibration from the
file, and top-1 agreement with the torch model on held-out samples as the metric.

Samples are the rows of the feeds when every feed has the same names and trailing shapes (then
batches are re-formed), else whole feeds. One sample in `EVAL_EVERY` (the 5th, 10th, ...) is held
out; a file with a single sample is calibrated and evaluated on that sample (`held_out` false).
The labels are the torch model's argmax over the last axis of its first output, computed once
when the task is built; the metric is the fraction of positions whose argmax agrees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from mlpdeploy.model.calibration import FileData
from mlpdeploy.model.data import Batch, Task

EVAL_EVERY = 5


@dataclass(frozen=True, eq=False)
class ArrayTask(Task):
    """Top-1 agreement with torch on held-out samples of a user's arrays."""

    name: str = "data"
    kind: str = "arrays"
    metric: str = "agreement"
    input_name: str = ""
    label_key: str = "reference_top1"
    calibration: list[Batch] = field(default_factory=list, repr=False)  # samples (inputs + label_key)
    evaluation: list[Batch] = field(default_factory=list, repr=False)
    pooled: bool = True  # samples are rows: batches are formed by concatenating them
    source: str = ""
    info: dict = field(default_factory=dict)

    def _batches(self, samples: list[Batch], batch_size: int) -> Iterator[Batch]:
        if not self.pooled:
            yield from samples
            return
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            yield {k: np.concatenate([s[k] for s in chunk]) for k in chunk[0]}

    def calibration_batches(self, n: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        for batch in self.labeled_calibration_batches(n, batch_size, seed):
            yield {k: v for k, v in batch.items() if k != self.label_key}

    def labeled_calibration_batches(self, n: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        order = np.random.default_rng(seed).permutation(len(self.calibration))
        shuffled = [self.calibration[i] for i in order]
        for i, batch in enumerate(self._batches(shuffled, batch_size)):
            if i == n:
                return
            yield batch

    def eval_batches(self, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        yield from self._batches(self.evaluation[:limit], batch_size)

    def eval_arrays(self):
        raise NotImplementedError("ArrayTask yields its eval split with eval_batches")

    def _score(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        return float((logits.argmax(-1) == labels).sum()), labels.size

    def _reduce(self, scores: list[tuple[float, int]]) -> float:
        return sum(s for s, _ in scores) / sum(c for _, c in scores)

    def calibration_source(self) -> str:
        return self.source

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "metric": self.metric, "eval_samples": len(self.evaluation),
                "calibration_samples": len(self.calibration), **self.info}


def array_task(data: FileData, reference_fn: Callable[[Batch], np.ndarray], source: str) -> ArrayTask:
    """The agreement task on a loaded calibration file (feeds checked against the model's specs)."""
    pooled = data._poolable()
    if pooled:
        samples = [{k: v[i:i + 1] for k, v in feed.items()} for feed in data.feeds for i in range(len(next(iter(feed.values()))))]
    else:
        samples = list(data.feeds)
    labeled = [{**s, ArrayTask.label_key: np.asarray(reference_fn(s)).argmax(-1)} for s in samples]
    held = [i % EVAL_EVERY == EVAL_EVERY - 1 for i in range(len(labeled))]
    if len(labeled) >= 2 and not any(held):
        held[-1] = True
    evaluation = [s for s, h in zip(labeled, held) if h] or labeled
    calibration = [s for s, h in zip(labeled, held) if not h] or labeled
    info = {"held_out": len(labeled) >= 2, "pooled": pooled}
    return ArrayTask(name=f"data:{data.path.name}", calibration=calibration, evaluation=evaluation, pooled=pooled, source=source, info=info)
