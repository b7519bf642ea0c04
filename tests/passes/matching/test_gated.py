"""matching/gated.py on tiny inline onnx_ir graphs (the `g` builder in tests/passes/conftest.py): the
gated-MLP site fuse-gated-mlp and sparse-mlp share — which products are candidates, the whole site
around one (separate and fused gate/up, gate first or second), the down linear of a ReLU MLP, and
the look-alikes refused with their reasons."""

from __future__ import annotations

import numpy as np
import pytest

from mlpdeploy.passes.matching import MatchFailure
from mlpdeploy.passes.matching.gated import gating_products, match_down, match_site

RNG = np.random.default_rng(0)
D, H, OUT = 4, 6, 3


def weight(rows: int, cols: int) -> np.ndarray:
    return RNG.standard_normal((rows, cols)).astype(np.float32)


def silu(g, value, name):
    return g.op("Mul", value, g.op("Sigmoid", value, name=f"{name}_sig"), name=name)


def separate(g, gate_second: bool = False):
    """down(silu(x·Wg) * x·Wu): returns the product value and the graph."""
    x = g.input("x", ("batch", D))
    gate = g.op("MatMul", x, g.init("wg", weight(D, H)), name="gate")
    up = g.op("MatMul", x, g.init("wu", weight(D, H)), name="up")
    act = silu(g, gate, "act")
    product = g.op("Mul", *((up, act) if gate_second else (act, up)), name="product")
    y = g.op("MatMul", product, g.init("wd", weight(H, OUT)), name="down")
    return product, g.graph(y)


def test_separate_gate_and_up_in_either_operand_order(g):
    for gate_second in (False, True):
        product, graph = separate(type(g)(), gate_second)
        (candidate,) = list(gating_products(graph))
        site = match_site(candidate)
        assert candidate.outputs[0] is product and site.form == "separate" and site.activation == "silu" and site.hidden == H
        assert [n.name for n in (site.gate.nodes[0], site.up.nodes[0], site.down.nodes[0])] == ["gate", "up", "down"]


@pytest.mark.parametrize("gate_first", [True, False])
def test_one_gate_up_linear_cut_by_split(g, gate_first):
    x = g.input("x", ("batch", D))
    gate_up = g.op("MatMul", x, g.init("wgu", weight(D, 2 * H)), name="gate_up")
    first, second = g.op("Split", gate_up, name="split", outputs=2, axis=-1, num_outputs=2)
    gate, up = (first, second) if gate_first else (second, first)
    product = g.op("Mul", silu(g, gate, "act"), up, name="product")
    graph = g.graph(g.op("MatMul", product, g.init("wd", weight(H, OUT)), name="down"))
    site = match_site(next(gating_products(graph)))
    assert site.gate_up is not None and site.gate_first is gate_first and site.hidden == H
    assert site.form == "fused gate_up" + ("" if gate_first else " (gate second, swapped)")


def test_the_product_must_have_the_down_linear_as_its_only_reader(g):
    x = g.input("x", ("batch", D))
    gate = g.op("MatMul", x, g.init("wg", weight(D, H)), name="gate")
    up = g.op("MatMul", x, g.init("wu", weight(D, H)), name="up")
    product = g.op("Mul", silu(g, gate, "act"), up, name="product")
    g.graph(g.op("MatMul", product, g.init("wd", weight(H, OUT)), name="down"), g.op("Relu", product, name="spy"))  # a second reader
    with pytest.raises(MatchFailure, match=r"^the product 'product' has 2 readers; the down linear must be the only one$"):
        match_site(product.producer())


def test_gate_and_up_must_read_one_input(g):
    x, z = g.input("x", ("batch", D)), g.input("z", ("batch", D))
    gate = g.op("MatMul", x, g.init("wg", weight(D, H)), name="gate")
    up = g.op("MatMul", z, g.init("wu", weight(D, H)), name="up")
    product = g.op("Mul", silu(g, gate, "act"), up, name="product")
    g.graph(g.op("MatMul", product, g.init("wd", weight(H, OUT)), name="down"))
    with pytest.raises(MatchFailure, match=r"^gate and up linears read different inputs \('x' vs 'z'\)$"):
        match_site(product.producer())


def test_no_activation_is_bilinear_unless_refused(g):
    x = g.input("x", ("batch", D))
    product = g.op("Mul", g.op("MatMul", x, g.init("wg", weight(D, H)), name="gate"), g.op("MatMul", x, g.init("wu", weight(D, H)), name="up"),
                   name="product")
    g.graph(g.op("MatMul", product, g.init("wd", weight(H, OUT)), name="down"))
    assert match_site(product.producer()).activation == "none"
    with pytest.raises(MatchFailure, match=r"^no activation \(bilinear\) and option bilinear=false$"):
        match_site(product.producer(), bilinear=False)


def test_match_down_of_a_relu_mlp_and_its_width_check(g):
    x = g.input("x", ("batch", D))
    hidden = g.op("Relu", g.op("MatMul", x, g.init("wu", weight(D, H)), name="up"), name="act")
    g.graph(g.op("Add", g.op("MatMul", hidden, g.init("wd", weight(H, OUT)), name="down"), g.init("bd", weight(1, OUT)[0]), name="bias"))
    down = match_down(hidden.producer(), H)
    assert down.nodes[0].name == "down" and down.out_features == OUT and down.bias_array() is not None
    with pytest.raises(MatchFailure, match=rf"^down weight has {H} inputs, the gated hidden width is 5$"):
        match_down(hidden.producer(), 5)


def test_a_mul_inside_an_activation_is_no_candidate(g):
    x = g.input("x", ("batch", D))
    act = silu(g, g.op("MatMul", x, g.init("w", weight(D, H)), name="lin"), "act")  # SiLU's own Mul
    graph = g.graph(act)
    assert list(gating_products(graph)) == []
