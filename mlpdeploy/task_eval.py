"""Task metrics for validation: the zoo task's metric on reference and candidate, and their
top-1 agreement (perplexity for language models, accuracy for classifiers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .backends.onnxruntime import make_session, saved_session_config
from .bundle import ModelBundle
from .errors import MlpdeployError
from .runners import flatten_outputs

# Which way is worse, per metric: degradation = sign * (candidate - reference).
WORSE_WHEN = {"perplexity": 1.0, "accuracy": -1.0}


def torch_run_fn(bundle: ModelBundle):
    """`inputs → first output` for the torch module."""

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        args = [torch.from_numpy(np.ascontiguousarray(inputs[s.name])) for s in bundle.inputs]
        with torch.no_grad():
            return flatten_outputs(bundle.module(*args))[0].float().numpy()

    return run


def onnx_run_fn(model_path: Path | str):
    """`inputs → first output` for an ONNX model, with its saved session settings if any."""
    session = make_session(model_path, saved_session_config(model_path))
    first = session.get_outputs()[0].name
    names = [i.name for i in session.get_inputs()]

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        return session.run([first], {n: inputs[n] for n in names})[0]

    return run


def compare_task(
    bundle: ModelBundle,
    candidate: Path | str,
    *,
    limit: int | None = None,
    batch_size: int = 16,
    max_metric_delta: float | None = None,
) -> dict:
    """The task metric of reference and candidate on the eval split (first `limit` samples).

    `delta` = candidate − reference in the metric's units; `relative_delta` = delta / reference;
    `agreement` = fraction of positions (LM) or samples (classifier) whose argmax agrees.
    With `max_metric_delta`, `passed` says whether the degradation (worse-direction delta) fits.
    """
    task = bundle.task
    if task is None:
        raise MlpdeployError(f"{bundle.source} has no evaluation task; task metrics need a zoo model with a task")
    reference = task.evaluate(torch_run_fn(bundle), batch_size=batch_size, limit=limit)
    result = task.evaluate(onnx_run_fn(candidate), batch_size=batch_size, limit=limit)
    delta = result["value"] - reference["value"]
    report = {
        "task": task.name,
        "metric": task.metric,
        "reference": reference["value"],
        "candidate": result["value"],
        "delta": delta,
        "relative_delta": delta / reference["value"] if reference["value"] else float("nan"),
        "agreement": float(np.mean(reference["predictions"] == result["predictions"])),
        "samples": reference["samples"],
    }
    if max_metric_delta is not None:
        degradation = WORSE_WHEN.get(task.metric, 1.0) * delta
        report["max_metric_delta"] = max_metric_delta
        report["passed"] = bool(degradation <= max_metric_delta)
    return report
