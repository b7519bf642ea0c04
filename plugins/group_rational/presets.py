"""Coefficient presets for GroupRational: rational fits of identity, swish, gelu and relu, per form.

KAT initializes its rational activations from fitted coefficients; a fit is only valid for the
denominator form it was made for (KAT's published `gelu` coefficients were fitted for form B
and do not reproduce GELU under form A). Here every function is fitted for each form
separately, by least squares on FIT_POINTS uniform points of FIT_RANGE, degrees (5, 4):

  1. a linear least-squares start: minimize Σ (P(x) − f(x)·(1 + Σ c_i φ_i(x)))², with
     φ_i = |x|^i (form A) or x^i (form B); form A also starts from form B's fit;
  2. nonlinear least squares (scipy's Levenberg–Marquardt) on the true residual P/Q − f, with
     Q written exactly as the form defines it, from each start; the lowest RMS error wins;

and the maximum and RMS errors on the fit grid are recorded beside the coefficients in
presets.json. Regenerate it with

    python -m mlpdeploy.plugins.group_rational.presets          (needs scipy: the dev/train extras)

`preset(name, form, groups)` gives the coefficients as tensors shaped for the op.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path

import numpy as np

from mlpdeploy.errors import OpError, require

from .reference import FORMS

PRESETS_PATH = Path(__file__).with_name("presets.json")
FUNCTIONS = ("identity", "swish", "gelu", "relu")
DEGREES = (5, 4)
FIT_RANGE = (-3.0, 3.0)
FIT_POINTS = 4001


def target(name: str, x: np.ndarray) -> np.ndarray:
    """The function a preset approximates, in float64."""
    if name == "identity":
        return x.copy()
    if name == "swish":
        return x / (1.0 + np.exp(-x))
    if name == "gelu":
        erf = np.vectorize(math.erf)
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    if name == "relu":
        return np.maximum(x, 0.0)
    raise OpError(f"unknown GroupRational preset {name!r}; presets are {', '.join(FUNCTIONS)}")


def rational64(x: np.ndarray, a: np.ndarray, b: np.ndarray, form: str) -> np.ndarray:
    """P(x)/Q(x) in float64 with the op's definition (one group): a = a_0..a_m, b = b_1..b_n."""
    p = np.polynomial.polynomial.polyval(x, a)
    if form == "A":
        q = 1.0 + np.polynomial.polynomial.polyval(np.abs(x), np.concatenate([[0.0], np.abs(b)]))
    else:
        q = 1.0 + np.abs(np.polynomial.polynomial.polyval(x, np.concatenate([[0.0], b])))
    return p / q


def fit_grid() -> np.ndarray:
    return np.linspace(*FIT_RANGE, FIT_POINTS)


def fit(name: str, form: str, degrees: tuple[int, int] = DEGREES, starts: tuple[dict, ...] = ()) -> dict:
    """Fit `name` for `form` (also from `starts`, earlier fits); returns {numerator, denominator, max_abs_error, rms_error}."""
    optimize = require("scipy.optimize", "dev", "fitting GroupRational presets")
    m, n = degrees
    x = fit_grid()
    f = target(name, x)
    polynomial = np.linalg.lstsq(np.vander(x, m + 1, increasing=True), f, rcond=None)[0]
    polynomial[np.abs(polynomial) < 1e-12] = 0.0  # rounding dust of an exact fit
    if np.abs(np.polynomial.polynomial.polyval(x, polynomial) - f).max() < 1e-12:
        # a polynomial fits exactly (identity): Q = 1; the rational problem would be degenerate
        return _entry(polynomial, np.zeros(n), np.polynomial.polynomial.polyval(x, polynomial) - f)
    basis = np.abs(x) if form == "A" else x
    # 1. linear start: P(x) - f(x) * sum_i c_i phi_i(x) = f(x)
    design = np.concatenate([np.vander(x, m + 1, increasing=True), -f[:, None] * np.vander(basis, n + 1, increasing=True)[:, 1:]], axis=1)
    start = np.linalg.lstsq(design, f, rcond=None)[0]

    def residual(theta):
        return rational64(x, theta[: m + 1], theta[m + 1 :], form) - f

    candidates = [start]
    if np.abs(residual(start)).max() > 1e-12:  # identity is exact already
        for theta in [start, *(np.array(s["numerator"] + s["denominator"]) for s in starts)]:
            result = optimize.least_squares(residual, theta, method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=20000)
            candidates.append(result.x)
    best = min(candidates, key=lambda t: float(np.mean(residual(t) ** 2)))
    b = best[m + 1 :]
    return _entry(best[: m + 1], np.abs(b) if form == "A" else b, residual(best))  # form A reads |b_i|: store those


def _entry(a: np.ndarray, b: np.ndarray, err: np.ndarray) -> dict:
    return {
        "numerator": [float(v) for v in a],
        "denominator": [float(v) for v in b],
        "max_abs_error": float(np.abs(err).max()),
        "rms_error": float(np.sqrt(np.mean(err**2))),
    }


def fit_all() -> dict:
    presets = {}
    for name in FUNCTIONS:
        b = fit(name, "B")
        presets[name] = {"A": fit(name, "A", starts=(b,)), "B": b}
    return {
        "degrees": list(DEGREES),
        "fit_range": list(FIT_RANGE),
        "fit_points": FIT_POINTS,
        "method": "linear least squares start, then Levenberg-Marquardt on P/Q - f (scipy.optimize.least_squares)",
        "presets": presets,
    }


@functools.cache
def load() -> dict:
    """presets.json as written by `fit_all`."""
    return json.loads(PRESETS_PATH.read_text())


def preset(name: str, form: str = "A", groups: int = 1, shared_numerator: bool = True):
    """(numerator [1|G, m+1], denominator [G, n]) float32 tensors of preset `name` for `form`."""
    import torch

    data = load()["presets"]
    if name not in data:
        raise OpError(f"unknown GroupRational preset {name!r}; presets are {', '.join(data)}")
    if form not in FORMS:
        raise OpError(f"unknown GroupRational form {form!r}; forms are {', '.join(FORMS)}")
    entry = data[name][form]
    numerator = torch.tensor(entry["numerator"], dtype=torch.float32)[None].repeat(1 if shared_numerator else groups, 1)
    denominator = torch.tensor(entry["denominator"], dtype=torch.float32)[None].repeat(groups, 1)
    return numerator, denominator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpdeploy.plugins.group_rational.presets", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=PRESETS_PATH, help=f"where to write (default {PRESETS_PATH.name} beside this file)")
    args = parser.parse_args(argv)
    data = fit_all()
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(args.output)
    for name, forms in data["presets"].items():
        for form, entry in forms.items():
            print(f"{name:9s} form {form}: max |error| {entry['max_abs_error']:.3e}, rms {entry['rms_error']:.3e} on {FIT_RANGE}")
    print("wrote", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
