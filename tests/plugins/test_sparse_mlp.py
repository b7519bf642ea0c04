"""SparseMLP: the torch reference's properties, the ONNX function body and the compiled ONNX Runtime
kernel vs the reference, the Triton kernel (interpreter), the TensorRT plugin's rules."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlpdeploy.errors import OpError
from mlpdeploy.plugins.sparse_mlp import reference as R
from mlpdeploy.plugins.sparse_mlp import trt_plugin
from mlpdeploy.plugins.sparse_mlp.onnx_function import INPUT_NAMES, make_model, random_weights

HAS_CC = shutil.which("cc") is not None or shutil.which("gcc") is not None


def tensors(w: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in w.items()}


def inputs_of(model: ir.Model) -> list[torch.Tensor]:
    return [torch.from_numpy(v.const_value.numpy()) for v in model.graph.initializers.values()]


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if not HAS_CC:
        pytest.skip("no C compiler")
    from mlpdeploy.plugins.ort import library

    return library.build_library(tmp_path_factory.mktemp("ort-kernels"))


def session(model: ir.Model, lib=None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if lib is not None:
        from mlpdeploy.plugins.ort import library

        library.register(options, lib)
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])


# ---- the reference's properties -------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(d=st.sampled_from([1, 2, 7, 13, 32]), h=st.sampled_from([1, 3, 17, 31, 64]), m=st.sampled_from([1, 2, 5]),
       act=st.sampled_from(["relu", "gelu", "silu"]), seed=st.integers(0, 2**16))
def test_k_equal_h_is_the_dense_mlp(d, h, m, act, seed):
    w = tensors(random_weights(d, h, d, mode="topk", rank=3, seed=seed))
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(seed))
    y = R.sparse_mlp_topk(x, w["w_up"], w["b_up"], w["w_down_t"], w["b_down"], w["p_a"], w["p_b"], h, act)
    assert torch.equal(y, R.dense_mlp(x, w["w_up"], w["b_up"], w["w_down_t"], w["b_down"], act))


@settings(max_examples=25, deadline=None)
@given(d=st.sampled_from([1, 5, 13, 32]), h=st.sampled_from([1, 7, 29, 64]), m=st.sampled_from([1, 3, 4]), seed=st.integers(0, 2**16))
def test_threshold_zero_is_the_dense_gated_mlp(d, h, m, seed):
    w = tensors(random_weights(d, h, d, mode="threshold", seed=seed))
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(seed))
    y = R.sparse_mlp_threshold(x, w["w_gate"], w["b_gate"], w["w_up"], w["b_up"], w["w_down_t"], w["b_down"], torch.tensor([-1.0]), "silu")
    dense = R.dense_mlp(x, w["w_up"], w["b_up"], w["w_down_t"], w["b_down"], "silu", w["w_gate"], w["b_gate"])
    assert torch.equal(y, dense)


@settings(max_examples=30, deadline=None)
@given(d=st.sampled_from([3, 11, 16]), h=st.sampled_from([5, 23, 37]), m=st.sampled_from([1, 2, 7, 16]),
       frac=st.floats(0.05, 1.0), seed=st.integers(0, 2**16))
def test_topk_is_each_rows_own_selection_computed_over_the_union(d, h, m, frac, seed):
    """Batch union as specified: every row equals that row run alone, the union is the rows' top-k
    sets joined, and the output equals the dense MLP over exactly the selected neurons."""
    k = max(1, min(h, round(frac * h)))
    w = tensors(random_weights(d, h, d, mode="topk", rank=4, seed=seed))
    x = torch.randn(m, d, generator=torch.Generator().manual_seed(seed)) * 3
    args = (w["w_up"], w["b_up"], w["w_down_t"], w["b_down"], w["p_a"], w["p_b"], k, "relu")
    y = R.sparse_mlp_topk(x, *args)
    for r in range(m):
        torch.testing.assert_close(y[r:r + 1], R.sparse_mlp_topk(x[r:r + 1], *args), rtol=1e-5, atol=1e-5)
    mask = R.topk_mask(x, w["p_a"], w["p_b"], k)
    assert (mask.sum(1) == k).all()
    scores = (x @ w["p_a"]) @ w["p_b"]
    expected_union = set()
    for r in range(m):
        order = sorted(range(h), key=lambda j: (-float(scores[r, j]), j))  # TopK's tie rule: lower index first
        expected_union |= set(order[:k])
    assert R.union(mask).tolist() == sorted(expected_union)
    masked = torch.relu(x @ w["w_up"].T + w["b_up"]) * mask  # dense, with the unselected neurons zeroed
    torch.testing.assert_close(y, masked @ w["w_down_t"] + w["b_down"], rtol=1e-5, atol=1e-5)


def test_topk_ties_take_lower_indices():
    x = torch.ones(1, 2)
    p_a, p_b = torch.ones(2, 1), torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]])
    assert R.topk_mask(x, p_a, p_b, 2).tolist() == [[0, 1, 1, 0, 0]]


def test_bad_k_and_shapes_are_one_line_errors():
    w = tensors(random_weights(4, 6, 4, mode="topk", rank=2))
    args = [torch.zeros(1, 4), w["w_up"], w["b_up"], w["w_down_t"], w["b_down"], w["p_a"], w["p_b"]]
    with pytest.raises(OpError, match=r"k must be in 1\.\.6"):
        R.sparse_mlp_topk(*args, 7)
    with pytest.raises(OpError, match="x's last dim is 5"):
        R.sparse_mlp_topk(torch.zeros(1, 5), *args[1:], 2)
    with pytest.raises(OpError, match="unknown SparseMLP mode 'bogus'"):
        R.sparse_mlp(torch.zeros(1, 4), *args[1:], torch.tensor([2]), mode="bogus")


# ---- ONNX function body and the compiled kernel vs the reference -----------------------------

CASES = [  # (mode, activation, d, h, d_out, k or threshold, x shape)
    ("topk", "relu", 33, 47, 21, 7, (2, 5)),
    ("topk", "relu", 13, 31, 13, 31, (1,)),  # k = h, batch 1
    ("topk", "gelu", 17, 29, 11, 1, (3,)),  # k = 1, prime widths
    ("topk", "silu", 16, 64, 16, 16, (1, 1)),
    ("threshold", "silu", 33, 47, 21, 0.3, (2, 5)),
    ("threshold", "gelu_tanh", 13, 37, 7, 0.0, (1,)),
    ("threshold", "relu", 19, 23, 19, 0.2, (4,)),
]


def _model_and_x(case, seed=0):
    mode, act, d, h, d_out, sel, lead = case
    kwargs = {"k": sel} if mode == "topk" else {"threshold": sel}
    model = make_model(d, h, d_out, mode=mode, activation=act, rank=5, x_rank=len(lead) + 1, seed=seed, **kwargs)
    x = np.random.default_rng(seed).standard_normal((*lead, d)).astype(np.float32) * 2
    return model, x


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}x{c[3]}-{c[6]}")
def test_function_body_matches_reference(case, assert_close):
    model, x = _model_and_x(case)
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
    assert inferred.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    ref = R.sparse_mlp(torch.from_numpy(x), *inputs_of(model), mode=case[0], activation=case[1]).numpy()
    assert_close(session(model).run(None, {"x": x})[0], ref, "float32", "function body")


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}x{c[3]}-{c[6]}")
def test_compiled_kernel_matches_reference(case, lib, assert_close):
    model, x = _model_and_x(case, seed=3)
    ref = R.sparse_mlp(torch.from_numpy(x), *inputs_of(model), mode=case[0], activation=case[1]).numpy()
    assert_close(session(model, lib).run(None, {"x": x})[0], ref, "float32", "compiled kernel")


def test_registered_kernel_replaces_the_function_body(lib):
    """With the library registered ONNX Runtime runs the kernel, not the body: a body made wrong on
    purpose (TopK over -scores) changes the plain session's answer but not the registered one's."""
    model, x = _model_and_x(CASES[0])
    good = session(model).run(None, {"x": x})[0]
    function = next(iter(model.functions.values()))
    topk = next(n for n in function if n.op_type == "TopK")
    topk.attributes["largest"] = ir.AttrInt64("largest", 0)
    assert not np.allclose(session(model).run(None, {"x": x})[0], good, atol=1e-3)
    np.testing.assert_allclose(session(model, lib).run(None, {"x": x})[0], good, atol=2e-5)


def test_compiled_kernel_gives_nan_for_a_bad_k(lib):
    model, x = _model_and_x(CASES[0])
    model.graph.initializers["k"].const_value = ir.tensor(np.array([48], dtype=np.int64), name="k")  # > h
    assert np.isnan(session(model, lib).run(None, {"x": x})[0]).all()


@settings(max_examples=12, deadline=None)
@given(d=st.sampled_from([1, 7, 16, 31]), h=st.sampled_from([2, 13, 40]), m=st.sampled_from([1, 2, 9]),
       frac=st.floats(0.01, 1.0), scale=st.sampled_from([1e-3, 1.0, 1e3]), seed=st.integers(0, 1000))
def test_body_and_kernel_property(d, h, m, frac, scale, seed, lib):
    k = max(1, min(h, round(frac * h)))
    model = make_model(d, h, mode="topk", activation="relu", k=k, rank=3, seed=seed)
    x = (np.random.default_rng(seed).standard_normal((m, d)) * scale).astype(np.float32)
    ref = R.sparse_mlp(torch.from_numpy(x), *inputs_of(model), mode="topk", activation="relu").numpy()
    tol = 2e-5 * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(session(model).run(None, {"x": x})[0], ref, rtol=0, atol=tol)
    np.testing.assert_allclose(session(model, lib).run(None, {"x": x})[0], ref, rtol=0, atol=tol)


# ---- Triton (interpreter) and the TensorRT plugin's rules ------------------------------------


@pytest.mark.parametrize("case", CASES[:6], ids=lambda c: f"{c[0]}-{c[1]}-{c[2]}x{c[3]}-{c[6]}")
def test_triton_kernel_matches_reference(case, assert_close):
    pytest.importorskip("triton")
    from mlpdeploy.plugins.sparse_mlp.kernel import sparse_mlp_triton
    from mlpdeploy.plugins.triton_common import kernel_device

    if kernel_device() is None:
        pytest.skip("no Triton device (TRITON_INTERPRET=0 and no GPU)")
    model, x = _model_and_x(case, seed=5)
    device = kernel_device()
    args = [t.to(device) for t in inputs_of(model)]
    got = sparse_mlp_triton(torch.from_numpy(x).to(device), *args, mode=case[0], activation=case[1]).cpu().numpy()
    ref = R.sparse_mlp(torch.from_numpy(x), *inputs_of(model), mode=case[0], activation=case[1]).numpy()
    assert_close(got, ref, "float32", "triton")


def test_trt_plugin_rules():
    assert trt_plugin.decode_fields({}) == {"mode": "topk", "activation": "relu"}
    assert trt_plugin.decode_fields({"mode": np.frombuffer(b"threshold", np.int8), "activation": np.frombuffer(b"silu", np.int8)}) == {
        "mode": "threshold", "activation": "silu"}
    with pytest.raises(OpError, match="unknown SparseMLP mode"):
        trt_plugin.decode_fields({"mode": np.frombuffer(b"dense", np.int8)})
    assert trt_plugin.output_dims([2, 5, 33], [47, 21]) == [2, 5, 21]
    topk, threshold = trt_plugin.supports_combination("topk"), trt_plugin.supports_combination("threshold")
    types = ["HALF"] * 7 + ["INT64"]
    assert topk(7, types, [True] * 8) and not topk(7, ["HALF"] * 8, [True] * 8)
    assert threshold(7, ["FLOAT"] * 8, [True] * 8) and not threshold(7, types, [True] * 8)
    assert len(INPUT_NAMES["topk"]) == len(INPUT_NAMES["threshold"]) == 8
