"""fuse-gated-mlp on hand-built ONNX graphs: Gemm and Transpose linears, the Gelu/Swish ops and
contrib ops, formula spellings, and the look-alikes that must be left alone (with a reason)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest

from mlpdeploy.passes.pipeline import parse_pass_spec, run_pipeline
from mlpdeploy.scopes import module_path

D, H, D_OUT = 11, 7, 5


class Builder:
    """A tiny onnx.helper graph builder: weights are seeded uniform(-0.5, 0.5) initializers."""

    def __init__(self, dtype=np.float32, rank: int = 3, seed: int = 0):
        self.dtype, self.rank = np.dtype(dtype), rank
        self.elem = onnx.helper.np_dtype_to_tensor_dtype(self.dtype)
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs, self.count = [], [], [], 0
        self.opsets = {"": 20}

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def input(self, name: str, width: int) -> str:
        dims = ["batch", "seq"][: self.rank - 1] + [width]
        self.inputs.append(oh.make_tensor_value_info(name, self.elem, dims))
        return name

    def init(self, array, name: str | None = None) -> str:
        name = name or self.name("w")
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(self, value: float) -> str:
        return self.init(np.array(value, dtype=self.dtype))

    def weight(self, *shape) -> np.ndarray:
        return self.rng.uniform(-0.5, 0.5, shape).astype(self.dtype)

    def op(self, op_type: str, *inputs: str, outputs: int = 1, domain: str = "", scope=None, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(outputs)]
        node = oh.make_node(op_type, list(inputs), outs, name=self.name(f"node_{op_type}_"), domain=domain, **attrs)
        if scope is not None:
            oh.set_metadata_props(node, {"pkg.torch.onnx.name_scopes": repr(scope)})
        self.nodes.append(node)
        return outs if outputs > 1 else outs[0]

    def linear(self, x: str, d_in: int, d_out: int, form: str = "matmul", bias: bool = False, scope=None) -> str:
        """x·W (+b) as `matmul` (W [in,out]), `transpose` (Transpose of W [out,in]), `constant`
        (W from a Constant node), `cast` (Cast of an fp16 W), `gemm` (transB=0, separate Add bias) or `gemm_t` (transB=1,
        alpha=0.5, C with beta=2: both folded at rewrite time)."""
        w = self.weight(d_in, d_out)
        b = self.weight(d_out) if bias else None
        if form == "gemm_t":
            c = [self.init(b)] if bias else []
            return self.op("Gemm", x, self.init(w.T.copy()), *c, transB=1, alpha=0.5, beta=2.0, scope=scope)
        if form == "gemm":
            y = self.op("Gemm", x, self.init(w), scope=scope)
        elif form == "transpose":
            y = self.op("MatMul", x, self.op("Transpose", self.init(w.T.copy()), perm=[1, 0]), scope=scope)
        elif form == "cast":  # weights stored in fp16, cast up at run time
            w = w.astype(np.float16).astype(self.dtype)
            y = self.op("MatMul", x, self.op("Cast", self.init(w.astype(np.float16)), to=self.elem), scope=scope)
        elif form == "constant":
            y = self.op("MatMul", x, self.op("Constant", value=onnx.numpy_helper.from_array(w)), scope=scope)
        else:
            y = self.op("MatMul", x, self.init(w), scope=scope)
        return self.op("Add", self.init(b), y, scope=scope) if bias else y  # bias first: the other order

    def act(self, kind: str, a: str) -> str:
        c = self.const
        if kind == "silu":
            return self.op("Mul", self.op("Sigmoid", a), a)
        if kind == "swish":
            self.opsets[""] = 24
            return self.op("Swish", a)
        if kind in ("gelu_op", "gelu_tanh_op"):
            return self.op("Gelu", a, approximate="tanh" if kind == "gelu_tanh_op" else "none")
        if kind == "gelu_ms":
            self.opsets["com.microsoft"] = 1
            return self.op("Gelu", a, domain="com.microsoft")
        if kind == "gelu_tanh_ms":
            self.opsets["com.microsoft"] = 1
            return self.op("FastGelu", a, domain="com.microsoft")
        if kind == "relu":
            return self.op("Relu", a)
        if kind == "gelu_div":  # (x * (erf(x * 1/√2) + 1)) / 2
            erf = self.op("Erf", self.op("Mul", a, c(1 / math.sqrt(2))))
            return self.op("Div", self.op("Mul", a, self.op("Add", erf, c(1.0))), c(2.0))
        if kind == "gelu_tanh_cube":  # 0.5·x·(1 + tanh(√(2/π)·x + √(2/π)·0.044715·x·x·x)), expanded
            cube = self.op("Mul", self.op("Mul", a, a), a)
            k = math.sqrt(2 / math.pi)
            inner = self.op("Add", self.op("Mul", c(k), a), self.op("Mul", cube, c(k * 0.044715)))
            return self.op("Mul", self.op("Mul", c(0.5), a), self.op("Add", c(1.0), self.op("Tanh", inner)))
        assert kind == "none"
        return a

    def model(self, *outputs: str, ir_version: int = 10) -> ir.Model:
        outs = [oh.make_tensor_value_info(o, self.elem, [None] * self.rank) for o in outputs]
        graph = oh.make_graph(self.nodes, "g", self.inputs, outs, self.inits)
        opsets = [oh.make_opsetid(k, v) for k, v in self.opsets.items()]
        proto = oh.make_model(graph, opset_imports=opsets, ir_version=ir_version)
        onnx.checker.check_model(proto, full_check=True)
        return ir.from_proto(proto)


def gated(b: Builder, x: str, act: str = "silu", form: str = "matmul", bias=(False, False, False), swap_mul=False, scope=None) -> str:
    gate = b.linear(x, D, H, form, bias[0], scope=scope and [*scope, f"{scope[-1]}.gate_proj", "linear"])
    up = b.linear(x, D, H, form, bias[1], scope=scope and [*scope, f"{scope[-1]}.up_proj", "linear_1"])
    a = b.act(act, gate)
    prod = b.op("Mul", *((up, a) if swap_mul else (a, up)), scope=scope and [*scope, "mul"])
    return b.linear(prod, H, D_OUT, form, bias[2], scope=scope and [*scope, f"{scope[-1]}.down_proj", "linear_2"])


def feeds(model: ir.Model, dtype=np.float32):
    """Two feeds: symbolic dims (batch[, seq]) set to 1 (x 1), then odd sizes."""
    rng = np.random.default_rng(1)
    for sizes in ([1, 1], [3, 7]):
        feed = {}
        for v in model.graph.inputs:
            symbolic = iter(sizes)
            shape = [d if isinstance(d, int) else next(symbolic) for d in v.shape]
            feed[v.name] = rng.standard_normal(shape).astype(dtype)
        yield feed


def fuse_and_compare(model: ir.Model, h, expect: int = 1, **options) -> tuple[ir.Model, dict]:
    """Fuse a copy; check it, compare with the original in ORT, return (fused model, report)."""
    fused = ir.from_proto(ir.to_proto(model))
    report = h.fuse(fused, **options)
    assert report["rewritten"] == expect, report
    assert h.op_counts(fused)["GatedMLP"] == expect
    proto = h.checked(fused)
    dtype = model.graph.inputs[0].dtype.numpy()
    for feed in feeds(model, dtype):
        for got, want in zip(h.run(proto, feed), h.run(model, feed)):
            h.assert_close(got, want, "fused vs original")
    return fused, report


ACTS = {  # builder activation -> GatedMLP activation
    "silu": "silu", "swish": "silu", "gelu_op": "gelu", "gelu_tanh_op": "gelu_tanh", "gelu_ms": "gelu",
    "gelu_tanh_ms": "gelu_tanh", "relu": "relu", "gelu_div": "gelu", "gelu_tanh_cube": "gelu_tanh", "none": "none",
}
FORMS = ["matmul", "transpose", "constant", "cast", "gemm", "gemm_t"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("act", ACTS)
def test_activation_and_linear_forms(act, form, h):
    b = Builder(rank=2 if form.startswith("gemm") else 3)
    y = gated(b, b.input("x", D), act, form, bias=(True, True, True), swap_mul=act in ("relu", "gelu_ms"))
    fused, report = fuse_and_compare(b.model(y), h)
    node = next(n for n in fused.graph if n.op_type == "GatedMLP")
    assert node.attributes.get_string("activation") == ACTS[act]
    assert set(h.op_counts(fused)) == {"GatedMLP"}  # the weight Transpose/Constant went too
    assert report["skipped"] == {}


@pytest.mark.parametrize("bias", [(True, False, False), (False, True, True), (False, False, True), (True, True, False)], ids=str)
def test_partial_biases(bias, h):
    b = Builder()
    fused, _ = fuse_and_compare(b.model(gated(b, b.input("x", D), "silu", bias=bias)), h)
    node = next(n for n in fused.graph if n.op_type == "GatedMLP")
    assert len(node.inputs) == (5 if bias[2] else 4 if any(bias) else 3)


@pytest.mark.parametrize("act", ["silu", "gelu_tanh_cube", "gelu_div", "gelu_op"])
def test_fp16(act, h):
    b = Builder(np.float16)
    fused, _ = fuse_and_compare(b.model(gated(b, b.input("x", D), act, bias=(True, True, True))), h)
    assert all(v.dtype == ir.DataType.FLOAT16 for v in fused.graph.initializers.values())


def test_two_mlps_in_a_row_and_scopes(h):
    """Stacked MLPs with residuals: each fused, named after and scoped to its own module."""
    b = Builder()
    x = b.input("x", D)
    for i in range(2):
        scope = ["", f"layers.{i}", f"layers.{i}.mlp"]
        b_lin = gated(b, x, "silu", scope=scope)
        x = b.op("Add", x, b.op("MatMul", b_lin, b.init(b.weight(D_OUT, D))))
    fused, report = fuse_and_compare(b.model(x), h, expect=2)
    nodes = [n for n in fused.graph if n.op_type == "GatedMLP"]
    assert [module_path(n) for n in nodes] == ["layers.0.mlp", "layers.1.mlp"]
    assert [n.name for n in nodes] == ["layers.0.mlp", "layers.1.mlp"]
    assert sorted(report["sites"]) == ["layers.0.mlp", "layers.1.mlp"]
    assert "layers.1.mlp.gate_up_proj.weight_t" in fused.graph.initializers


def test_split_with_sizes_and_gate_second(h):
    """One gate_up linear, Split by a sizes input; the activated half is the SECOND one."""
    b = Builder()
    gate_up = b.linear(b.input("x", D), D, 2 * H, bias=True)
    first, second = b.op("Split", gate_up, b.init(np.array([H, H], dtype=np.int64)), outputs=2, axis=-1)
    y = b.linear(b.op("Mul", first, b.act("relu", second)), H, D_OUT)
    fused, report = fuse_and_compare(b.model(y), h)
    assert "swapped" in next(iter(report["sites"].values()))["form"]


def test_pipeline_option_bilinear_false_leaves_products_without_activation(h):
    b = Builder()
    x = b.input("x", D)
    model = b.model(gated(b, x, "none"), gated(b, x, "silu"))
    spec = parse_pass_spec("fuse-gated-mlp:bilinear=false")
    fused = ir.from_proto(ir.to_proto(model))
    report = run_pipeline(fused, [spec])[0]
    assert report["rewritten"] == 1 and next(iter(report["sites"].values()))["activation"] == "silu"
    assert list(report["skipped"].values()) == ["no activation (bilinear) and option bilinear=false"]
    fuse_and_compare(model, h, expect=2)  # and by default both


def test_shared_weight_is_read_not_removed(h):
    """A gate weight also read by another linear (tied weights): fused, and the shared
    initializer stays for its other reader; the MLP's own old weights go."""
    b = Builder()
    x = b.input("x", D)
    y = gated(b, x, "silu")
    gate_w = b.nodes[0].input[1]
    other = b.op("MatMul", x, gate_w)
    fused, _ = fuse_and_compare(b.model(y, other), h)
    assert gate_w in fused.graph.initializers
    assert len(fused.graph.initializers) == 3  # shared gate W, new W_gate_up, down W


def test_ir_version_raised_for_function_overloads(h):
    b = Builder()
    model = b.model(gated(b, b.input("x", D)), ir_version=8)
    fused, _ = fuse_and_compare(model, h)
    assert model.ir_version == 8 and fused.ir_version == 10


def test_running_twice_changes_nothing(h):
    b = Builder()
    fused, _ = fuse_and_compare(b.model(gated(b, b.input("x", D))), h)
    again = h.fuse(fused)
    assert again["rewritten"] == 0 and again["skipped"] == {}


# ------------------------------------------------------------------ look-alikes: left alone, with a reason
#
# Each builder returns (outputs, reason): reason is the complete skip reason the pass records for
# the one candidate site, or None when the look-alike is not even a candidate (nothing skipped).


UNKNOWN_ACTIVATION = (
    "'{}' comes from {}, which is neither a linear (MatMul/Gemm) nor one of GatedMLP's activations (SiLU, GELU, tanh-GELU, ReLU) of one"
)


def lookalike_up_is_an_input(b):
    x, y = b.input("x", D), b.input("y", H)
    outputs = [b.linear(b.op("Mul", b.act("silu", b.linear(x, D, H)), y), H, D_OUT)]
    return outputs, "up: 'y' comes from a graph input, not a linear (MatMul/Gemm)"


def lookalike_gate_is_an_input(b):
    x = b.input("x", H)
    outputs = [b.linear(b.op("Mul", b.act("silu", x), b.linear(x, H, H)), H, D_OUT)]
    return outputs, "gate: 'x' comes from a graph input, not a linear (MatMul/Gemm)"


def lookalike_silu_of_no_linear(b):
    z, w = b.input("z", D), b.input("w", D)
    return [b.linear(b.op("Mul", b.act("silu", z), w), D, D_OUT)], None  # not even a candidate


def lookalike_different_inputs(b):
    x1, x2 = b.input("x1", D), b.input("x2", D)
    prod = b.op("Mul", b.act("silu", b.linear(x1, D, H)), b.linear(x2, D, H))
    return [b.linear(prod, H, D_OUT)], "gate and up linears read different inputs ('x1' vs 'x2')"


def lookalike_product_is_an_output(b):
    x = b.input("x", D)
    prod = b.op("Mul", b.act("silu", b.linear(x, D, H)), b.linear(x, D, H))
    return [b.linear(prod, H, D_OUT), prod], "the product 'mul11' is a graph output"


def lookalike_product_read_twice(b):
    x = b.input("x", D)
    prod = b.op("Mul", b.act("silu", b.linear(x, D, H)), b.linear(x, D, H))
    outputs = [b.op("Add", b.linear(prod, H, D_OUT), b.linear(prod, H, D_OUT))]
    return outputs, "the product 'mul11' has 2 readers; the down linear must be the only one"


def lookalike_product_not_into_linear(b):
    x = b.input("x", D)
    prod = b.op("Mul", b.act("silu", b.linear(x, D, H)), b.linear(x, D, H))
    outputs = [b.op("ReduceSum", prod, keepdims=1)]
    return outputs, "the product 'mul11' is read by ReduceSum 'node_ReduceSum_14', not as the data input of a linear"


def lookalike_product_is_matmul_weight(b):
    x, v = b.input("x", D), b.input("v", H)
    prod = b.op("Mul", b.act("silu", b.linear(x, D, H)), b.linear(x, D, H))
    outputs = [b.op("MatMul", v, b.op("Transpose", prod, perm=[0, 2, 1]))]
    return outputs, "the product 'mul11' is read by Transpose 'node_Transpose_14', not as the data input of a linear"


def lookalike_gate_read_elsewhere(b):
    x = b.input("x", D)
    gate = b.linear(x, D, H)
    out = b.linear(b.op("Mul", b.act("silu", gate), b.linear(x, D, H)), H, D_OUT)
    return [out, b.op("Relu", gate)], "intermediate 'matmul2' (MatMul) is also read by Relu 'node_Relu_17'"


def lookalike_sigmoid_read_elsewhere(b):
    x = b.input("x", D)
    gate = b.linear(x, D, H)
    sig = b.op("Sigmoid", gate)
    out = b.linear(b.op("Mul", b.op("Mul", gate, sig), b.linear(x, D, H)), H, D_OUT)
    return [out, sig], "intermediate 'sigmoid4' (Sigmoid) is a graph output"


def lookalike_weight_is_an_input(b):
    x, w = b.input("x", D), b.input("w_up", H)
    b.inputs[-1] = oh.make_tensor_value_info("w_up", b.elem, [D, H])
    prod = b.op("Mul", b.act("silu", b.linear(x, D, H)), b.op("MatMul", x, w))
    return [b.linear(prod, H, D_OUT)], "up: weight 'w_up' of MatMul 'node_MatMul_9' is a graph input, not a constant initializer"


def lookalike_weight_is_computed(b):
    x, s = b.input("x", D), b.input("s", H)
    w = b.op("Mul", b.init(b.weight(D, H)), s)
    prod = b.op("Mul", b.act("silu", b.linear(x, D, H)), b.op("MatMul", x, w))
    return [b.linear(prod, H, D_OUT)], "up: weight 'mul2' of MatMul 'node_MatMul_12' is not a constant initializer"


def lookalike_unequal_split(b):
    gate_up = b.linear(b.input("x", D), D, 2 * H + 2)
    g, u, _ = b.op("Split", gate_up, b.init(np.array([H, H, 2], dtype=np.int64)), outputs=3, axis=-1)
    outputs = [b.linear(b.op("Mul", b.act("silu", g), u), H, D_OUT)]
    return outputs, "gate takes columns [0, 7] and up [7, 14] of 16; GatedMLP needs the two halves"


def lookalike_unequal_slices(b):
    gate_up = b.linear(b.input("x", D), D, 2 * H + 2)
    i64 = lambda *v: b.init(np.array(v, dtype=np.int64))  # noqa: E731
    g = b.op("Slice", gate_up, i64(0), i64(H), i64(-1))
    u = b.op("Slice", gate_up, i64(H + 2), i64(2 * H + 2), i64(-1))
    outputs = [b.linear(b.op("Mul", b.act("silu", g), u), H, D_OUT)]
    return outputs, "gate takes columns [0, 7] and up [9, 16] of 16; GatedMLP needs the two halves"


def lookalike_split_on_batch_axis(b):
    gate_up = b.linear(b.input("x", D), D, H)
    g, u = b.op("Split", gate_up, outputs=2, axis=0, num_outputs=2)
    return [b.linear(b.op("Mul", b.act("silu", g), u), H, D_OUT)], "gate is cut along axis 0, not the last axis"


def lookalike_gmlp_spatial_gating(b):  # gMLP: u * spatial(v), u, v = split(gelu(proj(x))); spatial mixes tokens
    u, v = b.op("Split", b.act("gelu_op", b.linear(b.input("x", D), D, 2 * H)), outputs=2, axis=-1, num_outputs=2)
    seq_mix = b.op("Transpose", b.op("MatMul", b.op("Transpose", v, perm=[0, 2, 1]), b.input("w_seq", 1)), perm=[0, 2, 1])
    b.inputs[-1] = oh.make_tensor_value_info("w_seq", b.elem, ["seq", "seq"])
    return [b.linear(b.op("Mul", u, seq_mix), H, D_OUT)], None


def lookalike_piece_times_linear(b):
    x = b.input("x", D)
    g, _ = b.op("Split", b.linear(x, D, 2 * H), outputs=2, axis=-1, num_outputs=2)
    outputs = [b.linear(b.op("Mul", b.act("silu", g), b.linear(x, D, H)), H, D_OUT)]
    return outputs, "gate is a Split piece but the other operand comes from MatMul: not one gate_up linear cut in halves"


def lookalike_both_activated(b):
    x = b.input("x", D)
    prod = b.op("Mul", b.act("silu", b.linear(x, D, H)), b.act("relu", b.linear(x, D, H)))
    return [b.linear(prod, H, D_OUT)], "both operands of the product are activated (silu, relu)"


def lookalike_broadcast_up(b):
    x = b.input("x", D)
    prod = b.op("Mul", b.act("silu", b.linear(x, D, H)), b.linear(x, D, 1))
    return [b.linear(prod, H, D_OUT)], "gate weight [11, 7] and up weight [11, 1] differ"


def lookalike_square(b):
    a = b.linear(b.input("x", D), D, H)
    return [b.linear(b.op("Mul", a, a), H, D_OUT)], "gate and up are the same value 'matmul2'"


def lookalike_quick_gelu(b):  # x·sigmoid(1.702x) is not one of GatedMLP's activations
    x = b.input("x", D)
    g = b.linear(x, D, H)
    act = b.op("Mul", g, b.op("Sigmoid", b.op("Mul", g, b.const(1.702))))
    return [b.linear(b.op("Mul", act, b.linear(x, D, H)), H, D_OUT)], UNKNOWN_ACTIVATION.format("mul9", "Mul")


def lookalike_wrong_gelu_constant(b):  # 0.5·x·(1+erf(x/2)): not GELU
    x = b.input("x", D)
    g = b.linear(x, D, H)
    act = b.op("Mul", b.op("Mul", g, b.const(0.5)), b.op("Add", b.op("Erf", b.op("Div", g, b.const(2.0))), b.const(1.0)))
    return [b.linear(b.op("Mul", act, b.linear(x, D, H)), H, D_OUT)], UNKNOWN_ACTIVATION.format("mul15", "Mul")


LOOKALIKES = {f.__name__.removeprefix("lookalike_"): f for f in list(globals().values()) if callable(f) and f.__name__.startswith("lookalike_")}


@pytest.mark.parametrize("case", LOOKALIKES)
def test_lookalike_is_left_alone(case, h):
    b = Builder()
    outputs, reason = LOOKALIKES[case](b)
    model = b.model(*outputs)
    fused = ir.from_proto(ir.to_proto(model))
    report = h.fuse(fused)
    assert report["rewritten"] == 0 and h.op_counts(fused)["GatedMLP"] == 0
    assert h.op_counts(fused) == h.op_counts(model)
    assert list(report["skipped"].values()) == ([] if reason is None else [reason])
    h.checked(fused)
    feed = next(feeds(model))
    for got, want in zip(h.run(fused, feed), h.run(model, feed)):
        np.testing.assert_array_equal(got, want)


def test_old_opset_is_skipped_with_the_reason(h):
    b = Builder()
    b.opsets[""] = 14
    model = b.model(gated(b, b.input("x", D)))
    report = h.fuse(model)
    assert report["rewritten"] == 0
    assert "opset 14 is below 15" in next(iter(report["skipped"].values()))
