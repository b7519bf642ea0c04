"""GroupRational presets: every (function, form) meets the fit error recorded beside it, through
the op's own reference in fp32; fits are per form (KAT's published gelu is a form-B fit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mlpdeploy.errors import OpError
from mlpdeploy.plugins.group_rational import presets
from mlpdeploy.plugins.group_rational.reference import group_rational

CASES = [(name, form) for name in presets.FUNCTIONS for form in ("A", "B")]

# KAT's published initial coefficients (rational_kat_cu, kat_rational/init.json), as data.
KAT_GELU = ([-0.00153969, 0.51692871, 0.44075827, 0.0972553, -0.00884418, -0.00378675], [-0.14171056, -0.06481231, -0.0444695, 0.01283776])
KAT_SWISH = (
    [3.054879741161051e-07, 0.5000007853744493, 0.24999783422824703, 0.05326628273219478, 0.005803034571292244, 0.0002751961022402342],
    [-4.111554955950634e-06, 0.10652899335007572, -1.2690007399796238e-06, 0.0005502331264140556],
)


def max_error(name: str, form: str, numerator, denominator) -> float:
    x = torch.from_numpy(presets.fit_grid().astype(np.float32))[:, None]
    y = group_rational(x, torch.as_tensor(numerator, dtype=torch.float32).reshape(1, -1), torch.as_tensor(denominator, dtype=torch.float32).reshape(1, -1), form)
    return float(np.abs(y[:, 0].double().numpy() - presets.target(name, x[:, 0].double().numpy())).max())


@pytest.mark.parametrize(("name", "form"), CASES)
def test_preset_meets_recorded_fit_error(name, form):
    entry = presets.load()["presets"][name][form]
    numerator, denominator = presets.preset(name, form, groups=1)
    recorded = entry["max_abs_error"]
    measured = max_error(name, form, numerator[0], denominator[0])
    assert measured <= recorded + 2e-6, f"{name}/{form}: {measured:.3g} > recorded {recorded:.3g}"  # + fp32 rounding
    assert recorded <= {"identity": 0.0, "swish": 2e-6, "gelu": 5e-3, "relu": 4e-2}[name]
    # the recorded error is the fit's own (float64) error on the same grid
    a, b = np.array(entry["numerator"]), np.array(entry["denominator"])
    err = presets.rational64(presets.fit_grid(), a, b, form) - presets.target(name, presets.fit_grid())
    assert np.isclose(np.abs(err).max(), recorded, rtol=1e-9, atol=1e-15)


def test_identity_is_exact_and_coefficients_are_shaped_for_the_op():
    numerator, denominator = presets.preset("identity", "A", groups=8)
    assert numerator.shape == (1, 6) and denominator.shape == (8, 4)
    assert numerator[0].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0, 0.0] and not denominator.any()
    per_group, _ = presets.preset("swish", "B", groups=3, shared_numerator=False)
    assert per_group.shape == (3, 6) and torch.equal(per_group[0], per_group[2])


def test_fits_are_per_form():
    """KAT's published gelu reproduces GELU under form B but not under form A (so mlpdeploy fits each
    form); KAT's swish works under both, and mlpdeploy's form-A gelu fit does."""
    assert max_error("gelu", "B", *KAT_GELU) < 5e-3
    assert max_error("gelu", "A", *KAT_GELU) > 1.0
    assert max(max_error("swish", f, *KAT_SWISH) for f in ("A", "B")) < 2e-4
    assert max_error("gelu", "A", *(t[0] for t in presets.preset("gelu", "A"))) < 5e-3


def test_unknown_preset_and_form():
    with pytest.raises(OpError, match="unknown GroupRational preset 'tanh'; presets are identity, swish, gelu, relu"):
        presets.preset("tanh")
    with pytest.raises(OpError, match="unknown GroupRational form 'C'"):
        presets.preset("gelu", "C")


@pytest.mark.slow
def test_fit_script_reproduces_the_recorded_presets(tmp_path):
    out = tmp_path / "presets.json"
    assert presets.main(["--output", str(out)]) == 0
    fresh, recorded = presets.json.loads(out.read_text())["presets"], presets.load()["presets"]
    for name, form in CASES:
        assert fresh[name][form]["max_abs_error"] == pytest.approx(recorded[name][form]["max_abs_error"], rel=1e-3, abs=1e-12)
