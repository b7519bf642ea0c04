"""Error statistics and tolerances: one definition for outputs and layers alike.

Pass rule (Polygraphy's elementwise check): an element fails only when BOTH
|cand − ref| > atol and |cand − ref| / |ref| > rtol; an output passes when no element fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mlpdeploy.dtypes import check_precision
from mlpdeploy.errors import MlpdeployError

# Default tolerances per precision of the candidate (see README, "Tolerances").
TOLERANCES = {
    "fp32": (1e-4, 1e-3),
    "fp16": (2e-2, 2e-2),
    "bf16": (8e-2, 8e-2),
}


def tolerances(precision: str, atol: float | None = None, rtol: float | None = None) -> tuple[float, float]:
    """(atol, rtol): the explicit values, else the documented defaults for `precision`."""
    check_precision(precision)
    default_atol, default_rtol = TOLERANCES[precision]
    return (default_atol if atol is None else atol, default_rtol if rtol is None else rtol)


@dataclass
class ErrorStats:
    """How far a candidate tensor is from its reference. `passed` is None where no verdict applies
    (per-layer errors are reported, not judged)."""

    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    shape: list[int]
    passed: bool | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        if self.passed is None:
            del data["passed"]
        return data

    def worst(self, other: "ErrorStats") -> "ErrorStats":
        """The worse of two measurements of the same tensor (over several feeds)."""
        verdicts = [v for v in (self.passed, other.passed) if v is not None]
        return ErrorStats(
            max_abs=max(self.max_abs, other.max_abs),
            max_rel=max(self.max_rel, other.max_rel),
            mean_abs=max(self.mean_abs, other.mean_abs),
            cosine=min(self.cosine, other.cosine),
            shape=self.shape,
            passed=all(verdicts) if verdicts else None,
        )


def error_stats(cand: np.ndarray, ref: np.ndarray, passed: bool | None = None) -> ErrorStats:
    """max_abs, max_rel (relative to the reference), mean_abs and cosine similarity, in float64."""
    if cand.shape != ref.shape:
        raise MlpdeployError(f"output shapes differ: candidate {list(cand.shape)} vs reference {list(ref.shape)}")
    c, r = cand.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    diff = np.abs(c - r)
    rel = diff / np.maximum(np.abs(r), np.finfo(np.float64).tiny)
    denom = np.linalg.norm(c) * np.linalg.norm(r)
    return ErrorStats(
        max_abs=float(diff.max(initial=0.0)),
        max_rel=float(rel.max(initial=0.0)),
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=float(c @ r / denom) if denom > 0 else float(np.array_equal(c, r)),
        shape=list(ref.shape),
        passed=passed,
    )
