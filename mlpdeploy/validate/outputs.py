"""Output comparison: reference and candidate (Polygraphy runners) on the same feeds, each output
judged with its own tolerance (Polygraphy's elementwise rule; relative RMS error for int8 activations) (`mlpdeploy.validate.tolerance`).

The feeds run one at a time, reference first, so a cached decoder's decode feed can be made from
what the reference returned on the prefill (`mlpdeploy.validate.inputs`) without running it twice.
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


def compare_outputs(run_candidate: Callable[[Feed], dict], run_reference: Callable[[Feed], dict], feeds: list[Feed],
                    tolerance: Tolerance, feed_names: list[str | None] | None = None) -> dict[str, ErrorStats]:
    """Per-output errors with verdicts, the worst over `feeds`; each output of each feed judged with
    `tolerance.for_output(its reference)`."""
    names = feed_names or [None] * len(feeds)
    errors: dict[str, ErrorStats] = {}
    # every reference run first: a torch reference releases its weights after each run, so they are
    # not resident while the candidate's session runs (SmolLM2: 4.5x -> 3x the weights at peak)
    refs = [run_reference(feed) for feed in feeds]
    for feed_name, feed, ref in zip(names, feeds, refs):
        cand = {k: np.asarray(v) for k, v in run_candidate(feed).items()}
        missing = [name for name in ref if name not in cand]
        if missing:
            raise MlpdeployError(f"candidate has no output(s) {', '.join(missing)}; its outputs are {', '.join(cand)}")
        for name, want in ref.items():
            limits = tolerance.for_output(want)
            stats = error_stats(cand[name], want, tolerance=limits, feed=feed_name, stat=tolerance.stat)
            stats.passed = bool(stats.used <= 1.0)
            errors[name] = stats if name not in errors else errors[name].worst(stats)
    return errors
