"""fuse-group-rational on graphs exported by torch from plain-torch GR-KAN activations (written the
ways users write them), on hand-built graphs, and the look-alikes it must leave alone."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

from mlpdeploy.passes.pipeline import PassSpec, run_pipeline
from mlpdeploy.scopes import module_path

from ..fixtures import decomposed_rational as D

PASS = PassSpec("fuse-group-rational")
STYLES = {
    "per-channel-horner": (D.PerChannelHorner, False, "A", 8),
    "per-channel-horner-shared": (D.PerChannelHorner, True, "A", 8),
    "grouped-view-powers": (D.GroupedPowers, False, "A", 8),
    "form-b-one-group": (D.FormB, True, "B", 1),
}


def fuse(model: ir.Model) -> dict:
    return run_pipeline(model, [PASS])[0]


@pytest.mark.parametrize("style", STYLES)
def test_exported_activation_becomes_one_node(style, h):
    cls, shared, form, groups = STYLES[style]
    num, den = D.coefficients(8, shared)
    module = D.LinearThenRational(cls(num, den), 56).eval()  # 8 groups of 7 channels
    model = h.export(module, (torch.randn(2, 5, 56),))
    before = h.session(model)
    report = fuse(model)
    assert report["rewritten"] == 1 and report["skipped"] == {}
    site = report["sites"]["act"]
    assert site == {"form": form, "groups": groups, "degrees": [5, 4], "shared_numerator": shared or groups == 1}
    assert h.op_counts(model) == {"MatMul": 2, "Add": 2, "GroupRational": 1}
    node = next(n for n in model.graph if n.op_type == "GroupRational")
    assert module_path(node) == "act" and node.name == "act" and node.metadata_props["mlpdeploy.rewritten_by"] == "fuse-group-rational"
    assert [v.name for v in node.inputs[1:]] == ["act.numerator", "act.denominator"]
    h.checked(model)
    for shape in [(1, 1, 56), (3, 7, 56)]:
        x = np.random.default_rng(1).uniform(-4, 4, shape).astype(np.float32)
        h.assert_close(h.run(model, {"x": x})[0], before.run(None, {"x": x})[0], style)
    with torch.no_grad():
        x = torch.from_numpy(np.random.default_rng(2).uniform(-4, 4, (2, 3, 56)).astype(np.float32))
        h.assert_close(h.run(model, {"x": x.numpy()})[0], module(x).numpy(), f"{style} vs torch")


def test_signed_power_variant_is_left_alone_with_its_reason(h):
    num, den = D.coefficients(1, True)
    model = h.export(D.LinearThenRational(D.SignedPowers(num, den), 8).eval(), (torch.randn(2, 5, 8),))
    report = fuse(model)
    assert report["rewritten"] == 0
    (label, reason), = report["skipped"].items()
    assert label.startswith("act (") and reason == (
        "the denominator is a polynomial in x with signed powers (as KAT's pure-torch variant 1 + Σ|b_i|·x^i), not form A or B"
    )


def test_layer_norm_and_attention_divisions_are_not_reported(h):
    """Divisions that are not rational activations (LayerNorm by hand, attention scaling) are no sites at all."""

    class Plain(torch.nn.Module):
        def forward(self, x):
            centered = x - x.mean(-1, keepdim=True)
            return centered / torch.sqrt((centered**2).mean(-1, keepdim=True) + 1e-5) / 8.0

    model = h.export(Plain(), (torch.randn(2, 5, 8),))
    counts = h.op_counts(model)
    assert fuse(model) == {"pass": "fuse-group-rational", "rewritten": 0, "skipped": {}, "sites": {}} and h.op_counts(model) == counts


def _hand_built(g, *, extra_reader=False, numerator_abs=False):
    """y = (a0 + a1·x + a2·x²) / (1 + |b1·x| + |b2|·|x|²), per-channel a1, on a 2-D input of 6 channels."""
    x = g.input("x", ("batch", 6))
    a1 = g.init("a1", np.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0], np.float32))
    x2 = g.op("Mul", x, x, name="x2")
    p = g.op("Add", g.op("Add", g.const("a0", 0.5), g.op("Mul", a1, x, name="a1x"), name="p1"), g.op("Mul", g.const("a2", 0.25), x2, name="a2x2"), name="p")
    if numerator_abs:
        p = g.op("Abs", p, name="absp")
    ax = g.op("Abs", x, name="ax")
    q = g.op("Add", g.op("Add", g.const("one", 1.0), g.op("Abs", g.op("Mul", g.const("b1", -0.3), x, name="b1x"), name="abs_b1x"), name="q1"),
             g.op("Mul", g.op("Abs", g.const("b2", -0.2), name="abs_b2"), g.op("Mul", ax, ax, name="ax2"), name="b2ax2"), name="q")
    y = g.op("Div", p, q, name="div")
    outputs = [y, x2] if extra_reader else [y]
    return ir.Model(g.graph(*outputs), ir_version=10)


def test_hand_built_graph_groups_and_coefficients(g, h):
    model = _hand_built(g)
    x = np.random.default_rng(0).uniform(-3, 3, (4, 6)).astype(np.float32)
    expect = h.run(model, {"x": x})[0]
    report = fuse(model)
    assert report["sites"]["group_rational_0"] == {"form": "A", "groups": 2, "degrees": [2, 2], "shared_numerator": False}
    node = next(iter(model.graph))
    np.testing.assert_allclose(node.inputs[1].const_value.numpy(), [[0.5, 1.0, 0.25], [0.5, 2.0, 0.25]])
    np.testing.assert_allclose(node.inputs[2].const_value.numpy(), [[0.3, 0.2], [0.3, 0.2]])
    h.assert_close(h.run(model, {"x": x})[0], expect)


def test_intermediate_read_elsewhere_is_skipped(g):
    model = _hand_built(g, extra_reader=True)
    report = fuse(model)
    assert report["rewritten"] == 0
    assert list(report["skipped"].values()) == ["intermediate 'x2' (Mul) is a graph output"]


def test_non_polynomial_numerator_is_skipped(g):
    report = fuse(_hand_built(g, numerator_abs=True))
    assert report["rewritten"] == 0 and list(report["skipped"].values()) == ["takes |·| of a polynomial in x with a constant term"]


def test_plan_sites_restrict_the_pass(h):
    num, den = D.coefficients(8, False)
    model = h.export(D.LinearThenRational(D.PerChannelHorner(num, den), 16).eval(), (torch.randn(2, 3, 16),))
    spec = PassSpec("fuse-group-rational", sites={"other": {}})
    report = run_pipeline(model, [spec])[0]
    assert report["rewritten"] == 0 and list(report["skipped"].values()) == ["module act is not among the plan's sites"]
