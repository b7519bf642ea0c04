"""Output comparison: reference and candidate (Polygraphy runners) on the same feeds, each output
judged with its own tolerance (Polygraphy's elementwise rule; relative RMS error for int8 activations) (`mlpdeploy.validate.tolerance`).

The reference runs every feed first (a cached decoder's decode feed is made from what it returned
on the prefill, `mlpdeploy.validate.inputs`, without running it twice), then the candidate; the
comparison takes both sides' outputs, so neither model needs to be resident while it runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.validate.metrics import ErrorStats, error_stats
from mlpdeploy.validate.tolerance import Tolerance

Feed = dict[str, np.ndarray]


@contextlib.contextmanager
def quiet_polygraphy():
    """Polygraphy logs only errors inside the block."""
    from polygraphy.logger import G_LOGGER

    old = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR
    try:
        yield
    finally:
        G_LOGGER.module_severity = old


class Remembered:
    """`feed → outputs` of an active Polygraphy runner, remembering each feed's outputs (by the feed
    object) so a feed run once — a prefill whose cache feeds the decode step — is not run again."""

    def __init__(self, runner):
        self.runner = runner
        self.seen: dict[int, tuple[Feed, dict[str, np.ndarray]]] = {}

    def __call__(self, feed: Feed) -> dict[str, np.ndarray]:
        if id(feed) not in self.seen:
            outputs = {k: np.asarray(v) for k, v in self.runner.infer(feed).items()}
            self.seen[id(feed)] = (feed, outputs)  # the feed is kept, so its id stays its own
        return self.seen[id(feed)][1]


def run_all(run: Callable[[Feed], dict], feeds: list[Feed]) -> list[dict[str, np.ndarray]]:
    """`run(feed)` for each feed in order, each output as a numpy array."""
    return [{k: np.asarray(v) for k, v in run(feed).items()} for feed in feeds]


def compare_outputs(candidates: list[dict[str, np.ndarray]], references: list[dict[str, np.ndarray]], tolerance: Tolerance,
                    feed_names: list[str | None] | None = None) -> dict[str, ErrorStats]:
    """Per-output errors with verdicts, the worst over the feeds (`candidates[i]` and `references[i]`
    are the outputs of feed i); each output of each feed judged with `tolerance.for_output(its reference)`."""
    names = feed_names or [None] * len(references)
    errors: dict[str, ErrorStats] = {}
    for feed_name, cand, ref in zip(names, candidates, references):
        missing = [name for name in ref if name not in cand]
        if missing:
            raise MlpdeployError(f"candidate has no output(s) {', '.join(missing)}; its outputs are {', '.join(cand)}")
        for name, want in ref.items():
            limits = tolerance.for_output(want)
            stats = error_stats(cand[name], want, tolerance=limits, feed=feed_name, stat=tolerance.stat)
            stats.passed = bool(stats.used <= 1.0)
            errors[name] = stats if name not in errors else errors[name].worst(stats)
    return errors
