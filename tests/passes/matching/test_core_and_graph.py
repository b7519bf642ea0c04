"""matching/core.py and matching/graph.py on tiny inline onnx_ir graphs (the `g` builder in
conftest.py): constants and their spellings, producers, attributes, failures with their exact
reasons, scopes, names, initializers, dead code and enclosed sites."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from mlpdeploy.passes.matching import (
    CLASSES_KEY,
    NAMESPACE_KEY,
    MatchFailure,
    add_initializer,
    check,
    check_enclosed,
    close,
    common_scope,
    constant,
    describe,
    fail,
    float_attr,
    int_attr,
    is_constant,
    op_label,
    producer,
    rank,
    remove_dead,
    require_constant,
    scalar,
    scoped_metadata,
    unique_name,
    value_names,
)
from mlpdeploy.scopes import SCOPES_KEY

W = np.arange(6, dtype=np.float32).reshape(2, 3)


def reason(call, *args) -> str:
    """The reason `call(*args)` fails with."""
    with pytest.raises(MatchFailure) as failure:
        call(*args)
    assert str(failure.value) == failure.value.reason
    return failure.value.reason


# ------------------------------------------------------------------ failures


def test_check_and_fail_raise_match_failure_with_the_reason():
    assert check(True, "unused") is None
    assert reason(check, False, "gate is not a linear") == "gate is not a linear"
    assert reason(fail, "up: weight is a graph input") == "up: weight is a graph input"


def test_describe():
    assert describe(None) == "<missing>"
    assert describe(ir.val("x")) == "'x'"
    assert describe(ir.val(None)) == "<unnamed value>"


# ------------------------------------------------------------------ producers, labels, attributes, rank


def test_producer_filters_by_op_type_and_standard_domain(g):
    x = g.input("x")
    relu = g.op("Relu", x, name="r")
    neg = g.op("Neg", x, name="n", domain="ai.onnx")
    ms = g.op("Gelu", x, name="ms", domain="com.microsoft")
    g.graph(relu, neg, ms)
    assert producer(relu) is relu.producer()
    assert producer(relu, "Relu", "Sigmoid") is relu.producer()
    assert producer(relu, "Sigmoid") is None
    assert producer(neg, "Neg") is neg.producer()  # ai.onnx is the standard domain too
    assert producer(ms) is None and producer(ms, "Gelu") is None
    assert producer(x) is None and producer(None) is None


def test_op_label(g):
    x, w = g.input("x"), g.init("w", W)
    relu = g.op("Relu", x)
    ms = g.op("Gelu", x, domain="com.microsoft")
    g.graph(relu, ms)
    assert [op_label(v) for v in (x, w, relu, ms)] == ["a graph input", "no node", "Relu", "com.microsoft::Gelu"]


def test_int_and_float_attributes_and_their_defaults(g):
    gemm = g.op("Gemm", g.input("x"), g.init("w", W), transB=1, alpha=0.5).producer()
    assert int_attr(gemm, "transB", 0) == 1
    assert int_attr(gemm, "transA", 7) == 7
    assert float_attr(gemm, "alpha", 1.0) == 0.5
    assert float_attr(gemm, "beta", 1.0) == 1.0


def test_rank():
    assert rank(ir.val("x", ir.DataType.FLOAT, ["batch", "seq", 4])) == 3
    assert rank(ir.val("s", ir.DataType.FLOAT, [])) == 0
    assert rank(ir.val("u")) is None


def test_close_is_within_fp16_rounding():
    assert close(0.044715, float(np.float16(0.044715)))
    assert close(1.0, 1.0019) and not close(1.0, 1.0021)
    assert close(1.0, 1.05, rel=0.1)
    assert close(0.0, 0.0) and not close(0.0, 1e-9)


# ------------------------------------------------------------------ constants


def test_constant_spellings(g):
    w = g.init("w", W)
    const = g.const("c", W)
    cast = g.op("Cast", g.init("w16", W.astype(np.float16)), to=ir.DataType.FLOAT)
    reshaped = g.op("Reshape", w, g.init("shape", [0, 3, 1]))  # 0 copies the dimension
    flat = g.op("Reshape", w, g.init("flat", [-1]))
    ident = g.op("Identity", w)
    squeezed = g.op("Squeeze", g.init("w1", W.reshape(1, 2, 3)), g.init("axes", [0]))
    squeezed_all = g.op("Squeeze", g.init("w11", W.reshape(1, 2, 1, 3)))
    unsqueezed = g.op("Unsqueeze", w, g.init("axes1", [0, 3]))
    chained = g.op("Cast", g.op("Reshape", cast, g.const("shape6", [6])), to=ir.DataType.FLOAT16)
    g.graph(const, cast, reshaped, flat, ident, squeezed, squeezed_all, unsqueezed, chained)
    for value, expected in [
        (w, W), (const, W), (reshaped, W.reshape(2, 3, 1)), (flat, W.reshape(-1)), (ident, W),
        (squeezed, W), (squeezed_all, W), (unsqueezed, W.reshape(1, 2, 3, 1)),
    ]:  # fmt: skip
        array = constant(value)
        assert array.dtype == np.float32 and array.shape == expected.shape, value.name
        np.testing.assert_array_equal(array, expected)
        assert is_constant(value), value.name
    assert constant(cast).dtype == np.float32 and constant(chained).dtype == np.float16
    np.testing.assert_array_equal(constant(chained), W.reshape(6).astype(np.float16))


def test_unsqueeze_with_axes_attribute(g):
    unsqueezed = g.op("Unsqueeze", g.init("w", W), axes=[0])  # opset < 13 spelling
    g.graph(unsqueezed)
    assert constant(unsqueezed).shape == (1, 2, 3)


def test_what_is_not_constant(g):
    x = g.input("x", [2, 3])
    overridable = g.init("w", W, graph_input=True)  # an initializer that is a graph input can be fed at run time
    w = g.init("w2", W)
    cast_of_input = g.op("Cast", x, to=ir.DataType.FLOAT16)
    reshape_by_input = g.op("Reshape", w, g.op("Shape", x))
    sum_of_constants = g.op("Add", w, w)  # folding stops at Cast/Reshape/Identity/(Un)Squeeze
    unsqueeze_no_axes = g.op("Unsqueeze", w)
    ms_constant = g.op("Constant", domain="com.microsoft", value=ir.tensor(W))
    g.graph(cast_of_input, reshape_by_input, sum_of_constants, unsqueeze_no_axes, ms_constant)
    for value in (x, overridable, cast_of_input, reshape_by_input, sum_of_constants, ms_constant, None):
        assert constant(value) is None, describe(value)
        assert not is_constant(value), describe(value)
    assert constant(unsqueeze_no_axes) is None and not is_constant(unsqueeze_no_axes)


def test_constant_folding_depth(g):
    v = g.init("w", W)
    for _ in range(2):
        v = g.op("Identity", v)
    g.graph(v)
    assert constant(v, depth=2) is None
    np.testing.assert_array_equal(constant(v, depth=3), W)


def test_scalar(g):
    one = g.init("one", 2.5)
    one_by_one = g.init("one_by_one", [[2.5]])
    from_constant = g.const("c", [0.5])
    from_cast = g.op("Cast", g.init("i", 3), to=ir.DataType.FLOAT)
    vector = g.init("v", [1.0, 2.0])
    x = g.input("x", [1])
    g.graph(from_constant, from_cast)
    assert [scalar(v) for v in (one, one_by_one, from_constant, from_cast)] == [2.5, 2.5, 0.5, 3.0]
    assert scalar(vector) is None and scalar(x) is None and scalar(None) is None


def test_require_constant_reasons(g):
    x, w_in, w = g.input("x"), g.input("w_in", [4, 3]), g.init("w", W)
    mm = g.op("MatMul", x, w_in, name="mm").producer()
    computed = g.op("Relu", w_in, name="relu")
    g.graph(mm.outputs[0], computed)
    assert require_constant(w, "weight", mm) is None
    assert reason(require_constant, w_in, "weight", mm) == "weight 'w_in' of MatMul 'mm' is a graph input, not a constant initializer"
    assert reason(require_constant, computed, "bias", mm) == "bias 'relu' of MatMul 'mm' is not a constant initializer"
    assert reason(require_constant, None, "bias", mm) == "bias <missing> of MatMul 'mm' is not a constant initializer"


# ------------------------------------------------------------------ scopes


def scoped(g, scope, x):
    return g.op("Relu", x, scope=scope).producer()


def test_common_scope(g):
    x = g.input("x")
    gate = scoped(g, ["", "layers.0", "layers.0.mlp", "layers.0.mlp.gate_proj", "linear"], x)
    mul = scoped(g, ["", "layers.0", "layers.0.mlp", "mul"], x)
    other = scoped(g, ["", "layers.1", "layers.1.mlp", "mul"], x)
    unscoped = g.op("Neg", x).producer()
    assert common_scope([gate, mul]) == ["", "layers.0", "layers.0.mlp"]
    assert common_scope([gate]) == ["", "layers.0", "layers.0.mlp", "layers.0.mlp.gate_proj"]
    assert common_scope([unscoped, gate, unscoped, mul]) == ["", "layers.0", "layers.0.mlp"]  # nodes without scopes do not count
    assert common_scope([gate, other]) == [""]
    assert common_scope([unscoped]) == [] and common_scope([]) == []


def test_scoped_metadata_cuts_the_scope_and_ends_it_with_the_new_op():
    template = ir.node("Mul", [ir.val("a"), ir.val("b")])
    template.metadata_props.update(
        {
            SCOPES_KEY: repr(["", "layers.0", "layers.0.mlp", "mul"]),
            CLASSES_KEY: repr(["Model", "Layer", "MLP", "aten.mul.Tensor"]),
            NAMESPACE_KEY: ": Model/layers.0: Layer/layers.0.mlp: MLP/mul: aten.mul.Tensor",
            "pkg.torch.onnx.fx_node": "%mul",
            "other": "kept",
        }
    )
    props = scoped_metadata(template, ["", "layers.0"], "gated_mlp", "mlpdeploy::GatedMLP")
    assert props == {
        SCOPES_KEY: repr(["", "layers.0", "gated_mlp"]),
        CLASSES_KEY: repr(["Model", "Layer", "mlpdeploy::GatedMLP"]),
        NAMESPACE_KEY: ": Model/layers.0: Layer/gated_mlp: mlpdeploy::GatedMLP",
        "other": "kept",
    }
    assert template.metadata_props["pkg.torch.onnx.fx_node"] == "%mul"  # the template is not changed


# ------------------------------------------------------------------ names and initializers


def test_value_names_and_unique_name(g):
    x, w = g.input("x"), g.init("w", W)
    split = g.op("Split", g.op("Relu", x, name="r"), name="s", outputs=2, num_outputs=2)
    graph = g.graph(*split)
    taken = value_names(graph)
    assert taken == {"x", "w", "r", "s_0", "s_1"}
    assert unique_name("gate_up", taken) == "gate_up" and "gate_up" in taken
    assert unique_name("w", taken) == "w_1"
    assert unique_name("w", taken) == "w_2"
    assert taken == {"x", "w", "r", "s_0", "s_1", "gate_up", "w_1", "w_2"}
    assert w.name == "w"


def test_add_initializer(g):
    graph = g.graph()
    array = W.astype(np.float16)
    value = add_initializer(graph, "mlp.weight_t", array)
    assert graph.initializers["mlp.weight_t"] is value and value.is_initializer()
    assert value.dtype == ir.DataType.FLOAT16 and list(value.shape) == [2, 3]
    np.testing.assert_array_equal(constant(value), array)
    with pytest.raises(ValueError, match="already registered"):
        add_initializer(graph, "mlp.weight_t", array)


# ------------------------------------------------------------------ dead code


def test_remove_dead_goes_transitively_through_weight_transposes_and_initializers(g):
    x, w = g.input("x", [2]), g.init("w", W)
    y = g.op("Relu", x, name="y")
    mm = g.op("MatMul", x, g.op("Transpose", w, name="t"), name="mm")  # read by nobody
    graph = g.graph(y)
    assert remove_dead(graph, [mm]) == ["mm", "t", "w"]
    assert [n.name for n in graph] == ["y"] and dict(graph.initializers) == {}


def test_remove_dead_keeps_what_is_still_read(g):
    x = g.input("x", [2])
    shared, output_w, input_w = g.init("shared", W), g.init("out_w", W), g.init("in_w", W, graph_input=True)
    t = g.op("Transpose", shared, name="t")
    kept = g.op("MatMul", x, shared, name="kept")  # also reads `shared`
    split = g.op("Split", x, name="split", outputs=2, num_outputs=2)
    graph = g.graph(kept, output_w, split[1])
    assert remove_dead(graph, [t, output_w, input_w, x, kept, split[0], None]) == ["t"]
    assert [n.name for n in graph] == ["kept", "split"]
    assert set(graph.initializers) == {"shared", "out_w", "in_w"}


# ------------------------------------------------------------------ enclosed sites


def test_check_enclosed(g):
    x = g.input("x")
    a = g.op("Relu", x, name="a")
    b = g.op("Neg", a, name="b")
    c = g.op("Sigmoid", b, name="c")
    d = g.op("Exp", c, name="d")
    reader = g.op("Abs", a, name="reader")
    g.graph(d, c, reader)
    a_, b_, c_, d_ = (v.producer() for v in (a, b, c, d))
    assert check_enclosed([b_, c_], c) is None  # the site's output may be read anywhere, and be a graph output
    assert check_enclosed([a_], a) is None
    assert reason(check_enclosed, [a_, b_, c_], c) == "intermediate 'a' (Relu) is also read by Abs 'reader'"
    assert reason(check_enclosed, [b_, c_, d_], d) == "intermediate 'c' (Sigmoid) is a graph output"
