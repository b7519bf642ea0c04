"""Task comparison: the zoo task's metric on reference and candidate, and their top-1 agreement
(perplexity for language models, accuracy for classifiers).

Both sides run as Polygraphy runners, the reference through `TorchRunner`, the candidate
through its own `make_runner` (ONNX Runtime, a TensorRT engine, ...), so the metric is
measured on exactly what the output comparison ran.
"""

from __future__ import annotations

import numpy as np

from mlpdeploy.backends.candidate import Candidate
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import ModelBundle
from mlpdeploy.model.kv_cache import CacheLayout, prefill_feed
from mlpdeploy.validate.outputs import quiet_polygraphy
from mlpdeploy.validate.runners import TorchRunner

# Which way is worse, per metric: degradation = sign * (candidate - reference).
WORSE_WHEN = {"perplexity": 1.0, "accuracy": -1.0, "agreement": -1.0, "cosine": -1.0}


def degradation(metric: str, delta: float) -> float:
    """How much worse a metric got (positive = worse) given candidate − reference."""
    return WORSE_WHEN.get(metric, 1.0) * delta


def evaluate_runner(task, runner, *, batch_size: int, limit: int | None, cache: CacheLayout | None = None) -> dict:
    """`task.evaluate` with the first output of a Polygraphy runner (activated for the whole split).

    For a decoder exported with its cache, each batch runs as a prefill (empty cache, no padding).
    """

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        if cache is not None:
            feed = prefill_feed(feed["input_ids"], cache)
        return np.asarray(next(iter(runner.infer(feed).values())))

    with quiet_polygraphy(), runner:
        return task.evaluate(run, batch_size=batch_size, limit=limit)


def _cache_of(candidate: Candidate, bundle: ModelBundle) -> CacheLayout | None:
    """The candidate's own KV cache (a rewrite may have dropped some layers' caches), else the bundle's."""
    if candidate.manifest is not None and candidate.manifest.cache is not None:
        return CacheLayout.from_json(candidate.manifest.cache)
    return bundle.cache


LOGITS_BUDGET = 128 << 20  # bytes of one batch's output per side (SmolLM2 at 256 tokens: 50 MB a window)


def task_batch_size(task, candidate: Candidate, most: int) -> int:
    """Samples per batch for the task metric: `most`, fewer where one batch's logits would pass
    `LOGITS_BUDGET` (a causal LM's [batch, seq, vocab]: 16 windows of SmolLM2 are 805 MB, and
    torch's log-softmax over them several times that)."""
    seq = getattr(task, "seq_len", None)
    outputs = candidate.manifest.outputs if candidate.manifest is not None else []
    shape = outputs[0].get("shape", []) if outputs else []  # a causal LM's first output: [batch, seq, vocab]
    if not isinstance(seq, int) or len(shape) != 3 or not isinstance(shape[-1], int):
        return most
    return max(1, min(most, LOGITS_BUDGET // (seq * shape[-1] * 4)))


def compare_task(
    bundle: ModelBundle,
    candidate: Candidate,
    *,
    limit: int | None = None,
    batch_size: int | None = None,
    max_metric_delta: float | None = None,
    relative: bool = False,
) -> dict:
    """The task metric of reference and candidate on the eval split (first `limit` samples).

    `delta` = candidate − reference in the metric's units; `relative_delta` = delta / reference;
    `agreement` = fraction of positions (LM) or samples (classifier) whose argmax agrees.
    With `max_metric_delta`, `passed` says whether the degradation (worse-direction delta) fits:
    in the metric's units, or with `relative` as a fraction of the reference's metric.
    """
    task = bundle.task
    if task is None:
        raise MlpdeployError(f"{bundle.source} has no evaluation task; task metrics need a zoo model with a task, or --data FILE (docs/data.md)")
    batch_size = batch_size or task_batch_size(task, candidate, 16)
    reference = evaluate_runner(task, TorchRunner(bundle, name="reference:torch"), batch_size=batch_size, limit=limit, cache=bundle.cache)
    result = evaluate_runner(task, candidate.make_runner("candidate"), batch_size=batch_size, limit=limit, cache=_cache_of(candidate, bundle))
    delta = result["value"] - reference["value"]
    report = {
        "task": task.name,
        "metric": task.metric,
        "reference": reference["value"],
        "candidate": result["value"],
        "delta": delta,
        "relative_delta": delta / reference["value"] if reference["value"] else float("nan"),
        "agreement": task.agreement(reference["predictions"], result["predictions"]),
        "samples": reference["samples"],
        "executed": candidate.executed,
    }
    worse = degradation(task.metric, delta)
    if max_metric_delta is not None:
        worse = degradation(task.metric, delta)
        report["max_metric_delta"] = max_metric_delta
        report["relative_budget"] = relative
        report["passed"] = bool((worse / abs(reference["value"]) if relative else worse) <= max_metric_delta)
    return report
