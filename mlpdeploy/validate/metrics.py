"""Error statistics: one definition for outputs and layers alike.

The pass rule and the tolerances live in `mlpdeploy.validate.tolerance`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.validate.tolerance import TOLERANCES, Tolerance, rms, rms_of, tolerances, used, used_of  # noqa: F401


@dataclass
class ErrorStats:
    """How far a candidate tensor is from its reference. `passed` is None where no verdict applies
    (per-layer errors are reported, not judged). `scale` is the reference's RMS; `atol`/`rtol` the
    tolerance this tensor was judged with and `used` the share of it its worst element took
    (≤ 1 passes); `feed` names the feed these numbers come from when there were several.
    `rel_rms` is the relative RMS error ‖c − r‖₂ / ‖r‖₂ (what the int8 rule judges)."""

    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    shape: list[int]
    passed: bool | None = None
    scale: float | None = None
    atol: float | None = None
    rtol: float | None = None
    used: float | None = None
    feed: str | None = None
    rel_rms: float | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict) -> "ErrorStats":
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})

    def worst(self, other: "ErrorStats") -> "ErrorStats":
        """The worse of two measurements of the same tensor (over several feeds): the one that used
        more of its tolerance (else the larger max abs error), its numbers kept together; the verdict
        of both."""
        verdicts = [v for v in (self.passed, other.passed) if v is not None]
        key = (lambda s: (s.used, s.max_abs)) if self.used is not None and other.used is not None else (lambda s: (s.max_abs,))
        worse = self if key(self) >= key(other) else other
        return ErrorStats(**{**asdict(worse), "passed": all(verdicts) if verdicts else None})


def error_stats(cand: np.ndarray, ref: np.ndarray, passed: bool | None = None, tolerance: tuple[float, float] | None = None,
                feed: str | None = None, stat: str = "elementwise") -> ErrorStats:
    """max_abs, max_rel (relative to the reference), mean_abs, cosine similarity, relative RMS error
    and the reference's RMS, in float64; with `tolerance` (atol, rtol), also how much of it was used
    (`stat`: by the worst element, or by the RMS error — mlpdeploy.validate.tolerance)."""
    if cand.shape != ref.shape:
        raise MlpdeployError(f"output shapes differ: candidate {list(cand.shape)} vs reference {list(ref.shape)}")
    c, r = cand.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    with np.errstate(invalid="ignore"):
        diff = np.abs(c - r)
    abs_ref = np.abs(r)
    denom = np.linalg.norm(c) * np.linalg.norm(r)
    stats = ErrorStats(
        max_abs=float(diff.max(initial=0.0)),
        max_rel=float((diff / np.maximum(abs_ref, np.finfo(np.float64).tiny)).max(initial=0.0)),
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=float(c @ r / denom) if denom > 0 else float(np.array_equal(c, r)),
        shape=list(ref.shape),
        passed=passed,
        scale=rms(r),
        feed=feed,
    )
    stats.rel_rms = rms_of(diff) / stats.scale if stats.scale > 0 else (0.0 if stats.max_abs == 0 else float("inf"))
    if tolerance is not None:
        stats.atol, stats.rtol = tolerance
        stats.used = used_of(diff, abs_ref, *tolerance, stat=stat)
    return stats
