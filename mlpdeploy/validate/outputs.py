"""Output comparison: both runners through Polygraphy's Comparator, per-output error statistics."""

from __future__ import annotations

import contextlib

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.validate.metrics import ErrorStats, error_stats


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


def compare_outputs(candidate, reference, feeds: list[dict[str, np.ndarray]], atol: float, rtol: float) -> dict[str, ErrorStats]:
    """Run both Polygraphy runners on `feeds`; per-output errors (worst over feeds) with verdicts."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    with quiet_polygraphy():
        results = Comparator.run([candidate, reference], data_loader=feeds)
        cand_name, ref_name = candidate.name, reference.name
        cand_iters, ref_iters = results[cand_name], results[ref_name]
        missing = sorted(set(ref_iters[0].keys()) - set(cand_iters[0].keys()))
        if missing:
            raise MlpdeployError(
                f"candidate has no output(s) {', '.join(missing)}; its outputs are {', '.join(cand_iters[0].keys())}"
            )
        accuracy = Comparator.compare_accuracy(
            results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol, check_error_stat="elemwise")
        )
    verdicts = accuracy[0][(cand_name, ref_name)]
    errors: dict[str, ErrorStats] = {}
    for it, (cand, ref) in enumerate(zip(cand_iters, ref_iters)):
        for name in ref_iters[0].keys():
            stats = error_stats(np.asarray(cand[name]), np.asarray(ref[name]), bool(verdicts[it][name]))
            errors[name] = stats if name not in errors else errors[name].worst(stats)
    return errors
