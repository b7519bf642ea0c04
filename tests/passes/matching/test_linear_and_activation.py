"""matching/linear.py and matching/activation.py on tiny inline onnx_ir graphs (the `g` builder in
conftest.py): every linear spelling with what it reads, every activation spelling, and the
look-alikes each must refuse (a linear with its exact reason, an activation with None)."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
import pytest

from mlpdeploy.passes.matching import SQRT_HALF, MatchFailure, looks_linear, match_activation, match_linear, polynomial, product_factors

W = (np.arange(12, dtype=np.float32).reshape(4, 3) - 6) / 8  # [in 4, out 3]
B = np.array([0.5, -1.0, 2.0], dtype=np.float32)
K = math.sqrt(2 / math.pi)


def names(nodes) -> list[str]:
    return [n.name for n in nodes]


def reason(value: ir.Value) -> str:
    with pytest.raises(MatchFailure) as failure:
        match_linear(value)
    return failure.value.reason


# ------------------------------------------------------------------ linears


def test_matmul(g):
    x, w = g.input("x"), g.init("w", W)
    y = g.op("MatMul", x, w, name="mm")
    g.graph(y)
    lin = match_linear(y)
    assert (lin.input, lin.output, lin.weight, lin.transposed, lin.alpha, lin.biases) == (x, y, w, False, 1.0, [])
    assert names(lin.nodes) == ["mm"]
    assert (lin.in_features, lin.out_features, lin.dtype) == (4, 3, ir.DataType.FLOAT)
    np.testing.assert_array_equal(lin.weight_array(), W)
    assert lin.bias_array() is None
    assert lin.reusable_weight() is w and lin.reusable_bias() is None


@pytest.mark.parametrize("perm", [[1, 0], None])
def test_matmul_of_a_transposed_weight(perm, g):
    x, w_t = g.input("x"), g.init("w_t", W.T.copy())
    y = g.op("MatMul", x, g.op("Transpose", w_t, name="t", **({"perm": perm} if perm else {})), name="mm")
    g.graph(y)
    lin = match_linear(y)
    assert lin.weight is w_t and lin.transposed and names(lin.nodes) == ["mm"]  # the Transpose goes as dead code
    assert (lin.in_features, lin.out_features) == (4, 3)
    np.testing.assert_array_equal(lin.weight_array(), W)
    assert lin.reusable_weight() is None


def test_weight_from_a_constant_or_a_cast(g):
    x = g.input("x")
    from_constant = g.op("MatMul", x, g.const("c", W), name="mm")
    from_cast = g.op("MatMul", x, g.op("Cast", g.init("w16", W.astype(np.float16)), to=ir.DataType.FLOAT, name="cast"), name="mm2")
    g.graph(from_constant, from_cast)
    for value in (from_constant, from_cast):
        lin = match_linear(value)
        assert lin.dtype == ir.DataType.FLOAT and (lin.in_features, lin.out_features) == (4, 3)
        np.testing.assert_array_equal(lin.weight_array(), W)
        assert lin.reusable_weight() is None  # not an initializer: written anew


def test_gemm_folds_alpha_and_beta(g):
    x, w, c = g.input("x"), g.init("w", W), g.init("c", B)
    y = g.op("Gemm", x, w, c, name="gemm", alpha=0.5, beta=2.0)
    g.graph(y)
    lin = match_linear(y)
    assert (lin.weight, lin.transposed, lin.alpha, lin.biases, names(lin.nodes)) == (w, False, 0.5, [(c, 2.0)], ["gemm"])
    np.testing.assert_array_equal(lin.weight_array(), W * 0.5)
    np.testing.assert_array_equal(lin.bias_array(), B * 2)
    assert lin.reusable_weight() is None and lin.reusable_bias() is None


def test_gemm_trans_b(g):
    x, w_t, w = g.input("x"), g.init("w_t", W.T.copy()), g.init("w", W)
    y = g.op("Gemm", x, w_t, name="gemm", transB=1)
    z = g.op("Gemm", x, g.op("Transpose", w, perm=[1, 0]), name="gemm2", transB=1)  # transposed twice
    g.graph(y, z)
    lin = match_linear(y)
    assert (lin.weight, lin.transposed, lin.alpha, lin.biases) == (w_t, True, 1.0, [])
    assert (lin.in_features, lin.out_features) == (4, 3)
    np.testing.assert_array_equal(lin.weight_array(), W)
    twice = match_linear(z)
    assert (twice.weight, twice.transposed) == (w, False) and twice.reusable_weight() is w


def test_bias_add_in_either_order_and_after_gemm(g):
    x, w, b, c = g.input("x"), g.init("w", W), g.init("b", B), g.init("c", B * 4)
    first = g.op("Add", b, g.op("MatMul", x, w, name="mm"), name="add")
    second = g.op("Add", g.op("MatMul", x, w, name="mm2"), b, name="add2")
    both = g.op("Add", g.op("Gemm", x, w, c, name="gemm", beta=0.5), b, name="add3")
    g.graph(first, second, both)
    for value, mm in ((first, "mm"), (second, "mm2")):
        lin = match_linear(value)
        assert (lin.output, lin.biases, names(lin.nodes)) == (value, [(b, 1.0)], [mm, value.name])
        assert lin.reusable_bias() is b
    lin = match_linear(both)
    assert (lin.biases, names(lin.nodes)) == ([(c, 0.5), (b, 1.0)], ["gemm", "add3"])
    np.testing.assert_array_equal(lin.bias_array(), B * 3)
    assert lin.reusable_bias() is None


@pytest.mark.parametrize(
    "bias, total",
    [(np.float32(2.0), np.full(3, 2.0, np.float32)), (np.array([2.0], np.float32), np.full(3, 2.0, np.float32)), (B.reshape(1, 3), B)],
    ids=["scalar", "[1]", "[1, 3]"],
)
def test_bias_shapes_that_cannot_broadcast_the_output(bias, total, g):
    y = g.op("Add", g.op("MatMul", g.input("x"), g.init("w", W)), g.init("b", np.asarray(bias)))
    g.graph(y)
    np.testing.assert_array_equal(match_linear(y).bias_array(), total)


def test_not_a_linear_reasons(g):
    x, w, b = g.input("x"), g.init("w", W), g.init("b", B)
    relu = g.op("Relu", x, name="r")
    two_computed = g.op("Add", g.op("MatMul", x, w), relu, name="s")
    bias_of_relu = g.op("Add", relu, b, name="s2")
    g.graph(two_computed, bias_of_relu)
    assert reason(x) == "'x' comes from a graph input, not a linear (MatMul/Gemm)"
    assert reason(relu) == "'r' comes from Relu, not a linear (MatMul/Gemm)"
    assert reason(two_computed) == "'s' comes from an Add that is not a linear's bias add"
    assert reason(bias_of_relu) == "'s2' comes from an Add that is not a linear's bias add"


def test_weight_and_bias_reasons(g):
    x, w, w_in, c_in = g.input("x"), g.init("w", W), g.input("w_in", [4, 3]), g.input("c_in", [3])
    cases = {
        g.op("Gemm", g.op("Transpose", x), w, name="gemm", transA=1): "Gemm 'gemm' has transA=1 (its data input is transposed)",
        g.op("Gemm", x, w, c_in, name="gemm2"): "bias 'c_in' of Gemm 'gemm2' is a graph input, not a constant initializer",
        g.op("MatMul", x, w_in, name="mm"): "weight 'w_in' of MatMul 'mm' is a graph input, not a constant initializer",
        g.op("MatMul", x, g.op("Relu", w, name="r"), name="mm2"): "weight 'r' of MatMul 'mm2' is not a constant initializer",
        g.op("MatMul", x, g.op("Transpose", w_in, name="t"), name="mm3"): "weight 't' of MatMul 'mm3' is not a constant initializer",
        g.op("MatMul", x, g.op("Transpose", w, name="t2", perm=[0, 1]), name="mm4"): "weight Transpose 't2' has perm (0, 1)",
        g.op("MatMul", x, g.init("w3", W.reshape(1, 4, 3)), name="mm5"): "weight 'w3' of MatMul 'mm5' has rank 3, not 2",
        g.op("MatMul", x, None, name="mm6"): "MatMul 'mm6' is missing an input",
        g.op("Add", g.op("MatMul", x, w), g.init("b2", B[:2])): "bias 'b2' has shape [2], not [3]",
        g.op("Add", g.op("MatMul", x, w), g.init("b23", np.zeros((2, 3), np.float32))): "bias 'b23' has shape [2, 3], not [3]",
        g.op("Add", g.op("MatMul", x, w), g.init("b113", B.reshape(1, 1, 3))): "bias 'b113' of rank 3 may broadcast the output",
    }
    g.graph(*cases)
    assert [reason(value) for value in cases] == list(cases.values())


def test_bias_of_rank_2_on_an_input_of_unknown_rank(g):
    x = g.input("x")
    x.shape = None
    y = g.op("Add", g.op("MatMul", x, g.init("w", W)), g.init("b", B.reshape(1, 3)))
    g.graph(y)
    assert reason(y) == "bias 'b' of rank 2 may broadcast the output"


def test_looks_linear(g):
    x, w, b = g.input("x"), g.init("w", W), g.init("b", B)
    mm, gemm, relu = g.op("MatMul", x, w), g.op("Gemm", x, w), g.op("Relu", x)
    yes = [mm, gemm, g.op("Add", mm, b), g.op("Add", g.const("c", B), gemm)]
    no = [x, relu, None, g.op("Add", mm, relu), g.op("Add", relu, b), g.op("MatMul", x, w, domain="com.microsoft")]
    g.graph(*yes, *(v for v in no[1:] if v is not None))
    assert [looks_linear(v) for v in yes] == [True] * 4
    assert [looks_linear(v) for v in no] == [False] * 6


# ------------------------------------------------------------------ activations


def silu(g, x, swap=False):
    s = g.op("Sigmoid", x, name="sig")
    return g.op("Mul", *((s, x) if swap else (x, s)), name="mul")


def gelu_erf_div(g, x, root2=math.sqrt(2)):  # torch.jit-era export: x * 0.5 * (1 + erf(x / √2))
    erf = g.op("Erf", g.op("Div", x, g.init("root2", root2), name="div"), name="erf")
    return g.op("Mul", g.op("Mul", x, g.init("half", 0.5), name="m1"), g.op("Add", erf, g.init("one", 1.0), name="add"), name="m2")


def gelu_erf_halved(g, x):  # (x * (erf(x * 1/√2) + 1)) / 2
    erf = g.op("Erf", g.op("Mul", x, g.const("k", SQRT_HALF), name="m0"), name="erf")
    return g.op("Div", g.op("Mul", x, g.op("Add", erf, g.const("one", 1.0), name="add"), name="m1"), g.const("two", 2.0), name="div")


def gelu_tanh_pow(g, x, cubic=0.044715, one=1.0):  # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x^3)))
    cube = g.op("Pow", x, g.init("three", 3.0), name="pow")
    inner = g.op("Mul", g.init("k", K), g.op("Add", x, g.op("Mul", g.init("c", cubic), cube, name="m0"), name="a0"), name="m1")
    one_plus = g.op("Add", g.init("one", one), g.op("Tanh", inner, name="tanh"), name="a1")
    return g.op("Mul", g.op("Mul", g.init("half", 0.5), x, name="m2"), one_plus, name="m3")


def gelu_tanh_cube(g, x, dtype=np.float32):  # x·x·x and the constants distributed, in fp16 too
    c = lambda name, v: g.init(name, np.array(v, dtype=dtype))  # noqa: E731
    cube = g.op("Mul", g.op("Mul", x, x, name="xx"), x, name="xxx")
    inner = g.op("Add", g.op("Mul", c("k", K), x, name="m0"), g.op("Mul", cube, c("kc", K * 0.044715), name="m1"), name="a0")
    one_plus = g.op("Add", c("one", 1.0), g.op("Tanh", inner, name="tanh"), name="a1")
    return g.op("Mul", g.op("Mul", c("half", 0.5), x, name="m2"), one_plus, name="m3")


CUBE_NODES = ["m0", "xx", "xxx", "m1", "a0", "tanh", "a1", "m3", "m2"]
ACTIVATIONS = {  # spelling -> (build, kind, the nodes the activation is made of)
    "relu": (lambda g, x: g.op("Relu", x, name="r"), "relu", ["r"]),
    "silu": (silu, "silu", ["sig", "mul"]),
    "silu_swapped": (lambda g, x: silu(g, x, swap=True), "silu", ["sig", "mul"]),
    "swish": (lambda g, x: g.op("Swish", x, name="swish"), "silu", ["swish"]),
    "swish_alpha_1": (lambda g, x: g.op("Swish", x, name="swish", alpha=1.0), "silu", ["swish"]),
    "gelu_op": (lambda g, x: g.op("Gelu", x, name="gelu"), "gelu", ["gelu"]),
    "gelu_op_tanh": (lambda g, x: g.op("Gelu", x, name="gelu", approximate="tanh"), "gelu_tanh", ["gelu"]),
    "gelu_ms": (lambda g, x: g.op("Gelu", x, name="gelu", domain="com.microsoft"), "gelu", ["gelu"]),
    "fast_gelu_ms": (lambda g, x: g.op("FastGelu", x, name="fg", domain="com.microsoft"), "gelu_tanh", ["fg"]),
    "gelu_erf_div": (gelu_erf_div, "gelu", ["div", "erf", "add", "m2", "m1"]),
    "gelu_erf_halved": (gelu_erf_halved, "gelu", ["m0", "erf", "add", "div", "m1"]),
    "gelu_tanh_pow": (gelu_tanh_pow, "gelu_tanh", ["pow", "m0", "a0", "m1", "tanh", "a1", "m3", "m2"]),
    "gelu_tanh_cube": (gelu_tanh_cube, "gelu_tanh", CUBE_NODES),
    "gelu_tanh_cube_fp16": (lambda g, x: gelu_tanh_cube(g, x, np.float16), "gelu_tanh", CUBE_NODES),
}


@pytest.mark.parametrize("spelling", ACTIVATIONS)
def test_activation_spellings(spelling, g):
    build, kind, nodes = ACTIVATIONS[spelling]
    x = g.input("x")
    y = build(g, x)
    g.graph(y)
    act = match_activation(y)
    assert (act.kind, act.input, names(act.nodes)) == (kind, x, nodes)


LOOKALIKES = {  # spelling that is not one of the activations -> build
    "sigmoid": lambda g, x, y: g.op("Sigmoid", x),
    "x_times_sigmoid_of_y": lambda g, x, y: g.op("Mul", x, g.op("Sigmoid", y)),
    "quick_gelu": lambda g, x, y: g.op("Mul", x, g.op("Sigmoid", g.op("Mul", x, g.init("k", 1.702)))),
    "swish_alpha_1.702": lambda g, x, y: g.op("Swish", x, alpha=1.702),
    "fast_gelu_with_bias": lambda g, x, y: g.op("FastGelu", x, g.init("b", np.zeros(4, np.float32)), domain="com.microsoft"),
    "ms_relu": lambda g, x, y: g.op("Relu", x, domain="com.microsoft"),
    "custom_domain_relu": lambda g, x, y: g.op("Relu", x, domain="my.ops"),
    "erf_of_x_over_2": lambda g, x, y: gelu_erf_div(g, x, root2=2.0),
    "erf_of_another_value": lambda g, x, y: g.op(
        "Mul", g.op("Mul", x, g.init("half", 0.5)), g.op("Add", g.op("Erf", g.op("Div", y, g.init("r2", math.sqrt(2)))), g.init("one", 1.0))
    ),
    "two_plus_erf": lambda g, x, y: g.op("Mul", g.op("Mul", x, g.init("half", 0.5)), g.op("Add", g.op("Erf", x), g.init("two", 2.0))),
    "coefficient_0.4": lambda g, x, y: g.op("Mul", g.init("c", 0.8), gelu_erf_div(g, x)),
    "tanh_cubic_0.05": lambda g, x, y: gelu_tanh_pow(g, x, cubic=0.05),
    "one_minus_tanh": lambda g, x, y: gelu_tanh_pow(g, x, one=-1.0),
    "plain_product": lambda g, x, y: g.op("Mul", x, y),
    "tanh_alone": lambda g, x, y: g.op("Tanh", x),
}


@pytest.mark.parametrize("spelling", LOOKALIKES)
def test_activation_lookalikes_are_none(spelling, g):
    x, y = g.input("x"), g.input("y")
    value = LOOKALIKES[spelling](g, x, y)
    g.graph(value)
    assert match_activation(value) is None


def test_no_activation_of_nothing(g):
    x = g.input("x")
    c = g.const("c", 1.0)
    g.graph(c)
    assert match_activation(None) is None and match_activation(x) is None and match_activation(c) is None


# ------------------------------------------------------------------ the formula readers


def test_product_factors(g):
    x, y = g.input("x"), g.input("y")
    shared = g.op("Mul", x, g.init("two", 2.0), name="shared")  # read twice: stays a factor
    inner = g.op("Mul", g.op("Mul", x, g.init("three", 3.0), name="m0"), y, name="m1")
    root = g.op("Div", g.op("Mul", inner, shared, name="m2"), g.init("four", 4.0), name="div")
    g.graph(root, shared)
    coefficient, factors, nodes = product_factors(root)
    assert (coefficient, factors, names(nodes)) == (0.75, [x, y, shared], ["div", "m2", "m1", "m0"])
    assert product_factors(x) == (1.0, [x], [])


def test_polynomial(g):
    x, y = g.input("x"), g.input("y")
    c = lambda name, v: g.init(name, v)  # noqa: E731
    quadratic = g.op("Mul", g.op("Add", x, c("two", 2.0)), g.op("Sub", x, c("one", 1.0)))  # x² + x - 2
    cubic = g.op("Div", g.op("Neg", g.op("Pow", x, c("three", 3.0))), c("four", 4.0))  # -x³/4
    pow5 = g.op("Pow", x, c("five", 5.0))
    with_y = g.op("Add", x, y)
    g.graph(quadratic, cubic, pow5, with_y)
    assert polynomial(quadratic, x)[0] == {2: 1.0, 1: 1.0, 0: -2.0}
    assert polynomial(cubic, x)[0] == {3: -0.25}
    assert len(polynomial(cubic, x)[1]) == 3
    assert polynomial(pow5, x) is None and polynomial(with_y, x) is None and polynomial(None, x) is None
    assert polynomial(quadratic, x, depth=1) is None
