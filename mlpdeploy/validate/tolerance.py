"""Per-output tolerances that scale with the reference's magnitude (docs/validation.md).

The rule, for each output of each feed, with reference `r` and candidate `c`:

    atol = a_p · RMS(r)      (at least u_p, the unit roundoff of precision p)
    rtol = r_p
    an element fails when |c − r| > atol AND |c − r| > rtol · |r|  (Polygraphy's elementwise check);
    the output passes when no element fails (a NaN fails).

`used` = max over elements of |c − r| / max(atol, rtol·|r|) is how much of its tolerance the
worst element took: the output passes exactly when used ≤ 1. Integer and boolean outputs must
match exactly. An explicit `atol` (the --atol option) is absolute, the same for every output.

int8 activations (MatMulNBits at accuracy level 4) are judged by an aggregate instead (stat "rms"):

    RMS(c − r) ≤ a_int8 · RMS(r),  i.e. the relative RMS error ‖c − r‖₂ / ‖r‖₂ ≤ a_int8,

with `used` = RMS(c − r) / (a_int8 · RMS(r)). No single element decides: an activation on an int8
rounding boundary lands on different codes in torch and ONNX Runtime, and a few such flips move a
few elements far while the output as a whole stays where it was (docs/validation.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlpdeploy.dtypes import check_precision

# (a_p: atol as a fraction of the reference's RMS, r_p: rtol, u_p: absolute floor), per what the
# candidate computes in. fp32: 1e-3 is ten times the largest fp32 reordering noise measured on a
# 30-layer real decoder (SmolLM2-135M, random ids: 1.2e-3 on logits of RMS ~10), a hundred times
# that noise on real text, and a tenth of what a 1% change of one MLP's weight moves the logits.
A_INT8 = 0.1  # relative RMS error allowed with int8 activations (see STATS)
SCALED = {
    "fp32": (1e-3, 1e-3, 2.0**-24),
    "fp16": (2e-2, 2e-2, 2.0**-11),
    "bf16": (8e-2, 8e-2, 2.0**-8),
    # MatMulNBits at accuracy level 4 quantizes each block of activations to int8. mlpdeploy's torch
    # reference emulates that (mlpdeploy.quant.int8_blocks) and each node then matches to ~1e-5, but
    # an activation within float32 noise of an int8 rounding boundary lands on the other code in one
    # of the two (a step of block max / 127) and the difference propagates: on the 30-layer SmolLM2
    # the logits of a correct int4 build differ by up to 2.95 (cosine 0.9992). Judged by relative
    # RMS error (STATS), calibrated in bench/int8_rule.py; the task metric says what the numbers cost.
    "int8": (A_INT8, 0.0, 2.0**-24),
}
STATS = {"int8": "rms"}  # how an output's error is aggregated where not elementwise (Polygraphy's check)
ELEMENTWISE_CHECK = "an element fails when over both atol and rtol·|reference|"  # the reports' words for Polygraphy's check
TOLERANCES = {k: (a, r) for k, (a, r, _) in SCALED.items()}  # (atol × RMS, rtol) per precision


@dataclass(frozen=True)
class Tolerance:
    """How strictly an output is judged: `atol_rms` × RMS(reference) (or a fixed `atol`) and `rtol`."""

    precision: str
    rtol: float
    atol_rms: float | None = None  # the scaled rule; None when `atol` is fixed
    atol: float | None = None  # a fixed absolute tolerance (--atol), the same for every output
    floor: float = 0.0  # the smallest atol the scaled rule gives (an all-zero reference)
    stat: str = "elementwise"  # "elementwise": Polygraphy's check; "rms": RMS(c − r) ≤ atol (module docstring)

    @property
    def scaled(self) -> bool:
        return self.atol is None

    def for_output(self, ref: np.ndarray) -> tuple[float, float]:
        """(atol, rtol) for one output whose reference is `ref`; (0, 0) for integers and booleans."""
        if ref.dtype.kind not in "fc":
            return 0.0, 0.0
        if not self.scaled:
            return float(self.atol), self.rtol
        return max(self.atol_rms * rms(ref), self.floor), self.rtol

    def describe(self) -> str:
        """One line, e.g. `atol 1e-3 × RMS(reference) per output, rtol 1e-3 (fp32)`."""
        if self.stat == "rms":
            return f"relative RMS error ‖c − r‖ / ‖r‖ ≤ {self.atol_rms:g} per output ({self.precision})"
        atol = f"atol {self.atol_rms:g} × RMS(reference) per output" if self.scaled else f"atol {self.atol:g}"
        return f"{atol}, rtol {self.rtol:g} ({self.precision})"

    def to_json(self) -> dict:
        data = {"rule": "scaled" if self.scaled else "absolute", "precision": self.precision, "rtol": self.rtol, "stat": self.stat}
        data.update({"atol_rms": self.atol_rms} if self.scaled else {"atol": self.atol})
        data["description"] = self.describe()
        data["check"] = self.check()
        return data

    def check(self) -> str:
        """What fails an output, in words (the reports print it under the table)."""
        if self.stat == "rms":
            return "an output fails when RMS(candidate − reference) is over atol = that share of RMS(reference); no single element decides"
        return ELEMENTWISE_CHECK


def tolerances(precision: str, atol: float | None = None, rtol: float | None = None) -> Tolerance:
    """The rule for a candidate computing in `precision` (fp32, fp16, bf16; int8 = int8 activations):
    scaled by each output's RMS unless `atol` is given; `rtol` replaces the precision's default.
    int8 is judged by relative RMS error (stat "rms") unless `atol` or `rtol` asks for the elementwise check."""
    if precision != "int8":
        check_precision(precision)
    a, r, floor = SCALED[precision]
    rtol = r if rtol is None else rtol
    if atol is not None:
        return Tolerance(precision, rtol, atol=atol)
    stat = STATS.get(precision, "elementwise") if rtol == r else "elementwise"
    return Tolerance(precision, rtol, atol_rms=a, floor=floor, stat=stat)


def rms(ref: np.ndarray) -> float:
    """Root mean square of the finite values of `ref`, in float64 (0 for an empty array)."""
    values = np.asarray(ref, dtype=np.float64).ravel()
    if not np.isfinite(values).all():
        values = values[np.isfinite(values)]
    return float(np.sqrt(np.dot(values, values) / values.size)) if values.size else 0.0


def used(cand: np.ndarray, ref: np.ndarray, atol: float, rtol: float, stat: str = "elementwise") -> float:
    """max |c − r| / max(atol, rtol·|r|) over elements: ≤ 1 exactly when Polygraphy's elementwise
    check passes; inf where an element fails with no tolerance at all or is NaN. stat "rms": RMS(c − r) / atol."""
    c, r = np.asarray(cand, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    with np.errstate(invalid="ignore"):
        diff = np.abs(c - r)  # NaN where either side is NaN, or both are the same infinity: fails, as in Polygraphy
    return used_of(diff, np.abs(r), atol, rtol, stat)


def used_of(diff: np.ndarray, abs_ref: np.ndarray, atol: float, rtol: float, stat: str = "elementwise") -> float:
    """`used` from |c − r| and |r| (flat float64 arrays)."""
    if diff.size == 0:
        return 0.0
    if stat == "rms":
        error = rms_of(diff)
        if np.isnan(error):
            return float("inf")
        return error / atol if atol > 0 else (0.0 if error == 0 else float("inf"))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = diff / np.maximum(atol, rtol * abs_ref)
    worst = float(np.max(ratio))
    if np.isnan(worst):  # a NaN error, or 0/0 (no error, no tolerance): only the first fails
        ratio[(diff == 0)] = 0.0
        worst = float(np.max(np.where(np.isnan(ratio), np.inf, ratio)))
    return worst


def rms_of(diff: np.ndarray) -> float:
    """RMS of |c − r| (NaN when any element is NaN: it fails)."""
    return float(np.sqrt(np.dot(diff, diff) / diff.size)) if diff.size else 0.0
