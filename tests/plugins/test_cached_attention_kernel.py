"""CachedAttention, mlpdeploy's CPU kernel for the GroupQueryAttention subset its cached decoders use
(plugins/cached_attention): inside ONNX Runtime against the torch reference and ONNX Runtime's own
GroupQueryAttention node on every case the runtime feeds it (prefill, left-padded prefill, per-row
decode in a shared buffer through IO binding, chunks continuing a cache), row by row the same
whatever else is in the batch, the ragged mode (token_rows: each cache row its own token count in
one call, every segment bit for bit its solo normal-mode run), its exp, the portable build, the
`--ort-kernels` rewrite and a zoo decoder built with it."""

from __future__ import annotations

import ctypes
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from mlpdeploy.backends.onnxruntime.attention_kernels import attention_rewrite
from mlpdeploy.backends.onnxruntime.kernels import use_kernel_ops
from mlpdeploy.contract import DOMAIN, MS_DOMAIN
from mlpdeploy.plugins.cached_attention.onnx_function import OP, cached_attention_function
from mlpdeploy.plugins.cached_attention.reference import cached_attention, ragged_cached_attention
from mlpdeploy.plugins.ort import library

from .ort_kernel_helpers import rewritten, session

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")

MAX_POSITIONS = 128
MASKED = np.finfo(np.float32).min  # the masked value of the exported decoders' attention bias
TOKEN_ROWS = "token_rows"  # CachedAttention's input 10 (the ragged mode)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return library.build_library(tmp_path_factory.mktemp("ort-kernels"))


def gqa_model(heads: int, kv_heads: int, head_size: int, bias: bool = True, scale: float = 0.125) -> onnx.ModelProto:
    """One GroupQueryAttention node as our builds write it (packed QKV, rotary inside, query_seqlens)."""
    vi = helper.make_tensor_value_info
    inputs = [vi("qkv", TensorProto.FLOAT, ["b", "s", (heads + 2 * kv_heads) * head_size]),
              vi("past_key", TensorProto.FLOAT, ["b", kv_heads, "c", head_size]),
              vi("past_value", TensorProto.FLOAT, ["b", kv_heads, "c", head_size]),
              vi("seqlens_k", TensorProto.INT32, ["b"]), vi("total", TensorProto.INT32, []),
              vi("position_ids", TensorProto.INT64, ["b", "s"]), vi("query_seqlens", TensorProto.INT32, ["b"])]
    if bias:
        inputs.append(vi("bias", TensorProto.FLOAT, ["b", 1, "s", "t"]))
    angles = np.arange(MAX_POSITIONS)[:, None] * (10000.0 ** (-np.arange(head_size // 2) / (head_size // 2)))[None]
    tables = [onnx.numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos"), onnx.numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin")]
    node = helper.make_node("GroupQueryAttention", ["qkv", "", "", "past_key", "past_value", "seqlens_k", "total", "cos", "sin", "position_ids",
                                                    "bias" if bias else "", "", "", "", "", "", "query_seqlens"],
                            ["out", "present_key", "present_value"], domain=MS_DOMAIN, num_heads=heads, kv_num_heads=kv_heads, scale=scale,
                            do_rotary=1, rotary_interleaved=0, local_window_size=-1, smooth_softmax=-1, qk_output=0, causal=1,
                            k_quant_type="NONE", v_quant_type="NONE", sliding_window_cache=0, qk_norm_epsilon=1e-6)
    outputs = [vi("out", TensorProto.FLOAT, ["b", "s", heads * head_size]), vi("present_key", TensorProto.FLOAT, ["b", kv_heads, "p", head_size]),
               vi("present_value", TensorProto.FLOAT, ["b", kv_heads, "p", head_size])]
    graph = helper.make_graph([node], "gqa", inputs, outputs, tables)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])




def tables(proto: onnx.ModelProto) -> tuple[torch.Tensor, torch.Tensor]:
    init = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}
    return init["cos"], init["sin"]


def feeds(rng, heads, kv_heads, head_size, lengths, seq, capacity, total=None, pads=None, bias=True, magnitude=1.0) -> dict:
    """Inputs for rows of `lengths` tokens after a chunk of `seq` (the last `seq` are new), past buffers of
    `capacity` columns (random: only each row's first length − seq are its cache), `pads[b]` leading
    columns of row b masked out (left padding, positions counted from the first real token)."""
    batch = len(lengths)
    lengths = np.asarray(lengths)
    total = int(total if total is not None else lengths.max())
    pads = np.zeros(batch, int) if pads is None else np.asarray(pads)
    mask = (np.arange(total)[None] >= pads[:, None]) & (np.arange(total)[None] < lengths[:, None])
    positions = np.cumsum(mask, axis=1) - 1
    positions[~mask] = 1
    first = lengths - seq
    feed = {
        "qkv": (rng.standard_normal((batch, seq, (heads + 2 * kv_heads) * head_size)) * magnitude).astype(np.float32),
        "past_key": rng.standard_normal((batch, kv_heads, capacity, head_size)).astype(np.float32),
        "past_value": rng.standard_normal((batch, kv_heads, capacity, head_size)).astype(np.float32),
        "seqlens_k": (lengths - 1).astype(np.int32), "total": np.array(total, np.int32),
        "position_ids": np.stack([positions[b, first[b] : first[b] + seq] for b in range(batch)]).astype(np.int64),
        "query_seqlens": np.full(batch, seq, np.int32),
    }
    if bias:
        keep = mask[:, None, None, :] & (np.arange(total)[None, None, None, :] <= (first[:, None, None, None] + np.arange(seq)[None, None, :, None]))
        feed["bias"] = np.where(keep, 0.0, MASKED).astype(np.float32)
    return feed


def reference(feed: dict, proto: onnx.ModelProto, heads: int, kv_heads: int, scale: float = 0.125):
    cos, sin = tables(proto)
    t = {k: torch.from_numpy(v) for k, v in feed.items()}
    return [x.numpy() for x in cached_attention(t["qkv"], t["past_key"], t["past_value"], t["seqlens_k"], int(feed["total"]), cos, sin,
                                                t["position_ids"], t.get("bias"), t["query_seqlens"], num_heads=heads, kv_num_heads=kv_heads,
                                                scale=scale)]


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 2e-5) -> None:
    scale = max(float(np.abs(expected).max()), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=scale * rtol)


def assert_valid_columns_close(actual, expected, lengths, rtol: float = 2e-5) -> None:
    for b, length in enumerate(lengths):
        assert_close(actual[b, :, :length], expected[b, :, :length], rtol)


# (heads, kv heads, head size, row lengths after the step, chunk length, past capacity, total, left pads)
CASES = {
    "prefill-one-row": (9, 3, 64, [7], 7, 0, None, None),
    "prefill-left-padded": (9, 3, 64, [6, 6, 6], 6, 0, None, [2, 0, 5]),
    "decode-row-lengths": (9, 3, 64, [5, 13, 20], 1, 20, 20, None),
    "decode-left-padded": (4, 2, 32, [11, 11], 1, 10, None, [3, 0]),
    "chunk-continues-cache": (9, 3, 64, [9, 16], 4, 16, 16, None),
    "batch-1-decode": (9, 3, 64, [34], 1, 33, None, None),
    "odd-heads": (5, 1, 32, [3, 8, 2, 5, 7], 2, 7, 8, None),
    "prime-group": (7, 7, 16, [13, 4, 11], 1, 12, 13, None),
    "long-prefill-blocks": (6, 2, 48, [45, 45], 45, 0, None, [0, 9]),
    "long-chunk-blocks": (4, 2, 64, [50, 70], 37, 40, 72, None),
}


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_the_reference_and_ort(lib, tmp_path, case):
    heads, kv_heads, head_size, lengths, seq, capacity, total, pads = CASES[case]
    proto = gqa_model(heads, kv_heads, head_size)
    feed = feeds(np.random.default_rng(len(case)), heads, kv_heads, head_size, lengths, seq, capacity, total, pads)
    kernel = session(rewritten(proto, tmp_path, attention_rewrite), lib).run(None, feed)
    ours = [o for o in kernel]
    stock = session(proto).run(None, feed)
    expected = reference(feed, proto, heads, kv_heads)
    assert [o.shape for o in ours] == [o.shape for o in stock] == [o.shape for o in expected]
    assert_close(ours[0], expected[0])
    assert_close(ours[0], stock[0])
    for got, ort_present, ref_present in zip(ours[1:], stock[1:], expected[1:]):
        assert_close(got, ref_present, 1e-6)  # the rotation: float32 products, as the reference
        assert_close(got, ort_present, 1e-6)  # zeros past each row's length, as ONNX Runtime


@pytest.mark.parametrize("bias", [True, False])
def test_without_the_library_the_body_is_gqa(lib, tmp_path, bias):
    proto = gqa_model(9, 3, 64, bias=bias)
    feed = feeds(np.random.default_rng(3), 9, 3, 64, [5, 9], 2, 8, 9, bias=bias)
    ours = rewritten(proto, tmp_path, attention_rewrite)
    assert [(n.domain, n.op_type) for n in ours.graph.node] == [(DOMAIN, OP)]
    onnx.checker.check_model(ours, full_check=True)
    stock, body, kernel = session(proto).run(None, feed), session(ours).run(None, feed), session(ours, lib).run(None, feed)
    for a, b, k in zip(stock, body, kernel):
        np.testing.assert_array_equal(b, a)  # the function body is that very GroupQueryAttention node
        assert_close(k, a)


def bound_run(sess: ort.InferenceSession, feed: dict, cache: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """One run with `cache` (key, value arrays) bound as both past and present, as runtime/step.py binds it."""
    key, value = (ort.OrtValue.ortvalue_from_numpy(a) for a in cache)
    binding = sess.io_binding()
    for name, array in feed.items():
        if name == TOKEN_ROWS:  # an input with an initializer: bind_cpu_input does not find it, an OrtValue binds
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
        elif name not in ("past_key", "past_value"):
            binding.bind_cpu_input(name, array)
    binding.bind_ortvalue_input("past_key", key)
    binding.bind_ortvalue_input("past_value", value)
    binding.bind_output("out", "cpu")
    binding.bind_ortvalue_output("present_key", key)
    binding.bind_ortvalue_output("present_value", value)
    sess.run_with_iobinding(binding)
    out = binding.get_outputs()[0].numpy()
    cache[0][...], cache[1][...] = key.numpy(), value.numpy()
    return out


def test_shared_buffer_through_io_binding(lib, tmp_path):
    """Prefill, decode steps with per-row lengths, a verify chunk: each row's tokens land in place at its own length,
    the other columns stay as they were, and every output is ONNX Runtime's."""
    heads, kv_heads, head_size, capacity = 9, 3, 64, 40
    proto = gqa_model(heads, kv_heads, head_size)
    ours, stock = session(rewritten(proto, tmp_path, attention_rewrite), lib), session(proto)
    rng = np.random.default_rng(7)
    start = [rng.standard_normal((3, kv_heads, capacity, head_size)).astype(np.float32) for _ in range(2)]
    caches = {"ours": tuple(a.copy() for a in start), "stock": tuple(a.copy() for a in start)}
    lengths = np.array([0, 0, 0])
    for step, seq in enumerate([6, 1, 1, 3, 1]):
        if step == 0:  # a prefill of rows 6, 4 and 5 tokens long: one 6-token chunk, right-padded through query_seqlens
            grow = np.array([6, 4, 5])
            feed = feeds(rng, heads, kv_heads, head_size, [6, 6, 6], seq, capacity)
            feed["seqlens_k"] = (grow - 1).astype(np.int32)
        else:  # each row continues at its own length
            grow = np.full(3, seq)
            feed = feeds(rng, heads, kv_heads, head_size, lengths + grow, seq, capacity)
        feed["query_seqlens"] = grow.astype(np.int32)
        new = lengths + grow
        before = [c.copy() for c in caches["ours"]]
        out = {name: bound_run(sess, feed, caches[name]) for name, sess in (("ours", ours), ("stock", stock))}
        for b in range(3):
            assert_close(out["ours"][b, : grow[b]], out["stock"][b, : grow[b]])
        for mine, theirs, old in zip(caches["ours"], caches["stock"], before):
            assert_valid_columns_close(mine, theirs, new, 1e-6)
            for b in range(3):  # columns past the row's length: untouched
                np.testing.assert_array_equal(mine[b, :, new[b] :], old[b, :, new[b] :])
        lengths = new
    expected = reference({**feed, "past_key": before[0], "past_value": before[1]}, proto, heads, kv_heads)
    assert_close(out["ours"], expected[0])


def test_exp_matches_torch(lib):
    exp = ctypes.CDLL(str(lib)).mlpdeploy_cached_attention_exp
    exp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    x = np.concatenate([np.linspace(-87.3, 88.0, 200_003, dtype=np.float32),
                        np.float32([0.0, -0.0, 1e-30, -1e-30, 0.5, -0.5, 88.0, -87.3, -87.34, -100.0, MASKED, -np.inf])])
    y = np.empty_like(x)
    exp(x.ctypes.data, y.ctypes.data, x.size)
    exact = torch.exp(torch.from_numpy(x).double()).numpy()
    normal = exact >= np.finfo(np.float32).tiny
    ulps = np.abs(y[normal] - exact[normal]) / np.spacing(exact[normal].astype(np.float32))
    assert ulps.max() <= 1.5
    assert (y[x < -87.34] == 0).all() and y[x == 0].tolist() == [1.0, 1.0]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.sampled_from([1, 2, 3, 5]), seq=st.sampled_from([1, 1, 2, 3, 7, 33]), kv_heads=st.sampled_from([1, 2, 3]),
       group=st.sampled_from([1, 2, 3, 7]), head_size=st.sampled_from([16, 32, 64]), past=st.integers(0, 40),
       magnitude=st.sampled_from([1e-3, 1.0, 8.0]), threads=st.sampled_from([1, 2]), data=st.data())
def test_each_row_is_its_solo_result_and_the_reference(lib, tmp_path_factory, batch, seq, kv_heads, group, head_size, past, magnitude,
                                                       threads, data):
    """Any batch (1, odd, prime sizes; tiny to saturating scores): each row equals its one-row run bit for bit, at 1 or 2 threads."""
    heads = kv_heads * group
    lengths = [seq + data.draw(st.integers(0, past)) for _ in range(batch)]
    rng = np.random.default_rng(batch * 1000 + seq * 10 + past)
    proto = gqa_model(heads, kv_heads, head_size)
    feed = feeds(rng, heads, kv_heads, head_size, lengths, seq, max(lengths) - seq + 2, magnitude=magnitude)
    run = session(rewritten(proto, tmp_path_factory.mktemp("m"), attention_rewrite), lib, threads)
    batched = run.run(None, feed)
    expected = reference(feed, proto, heads, kv_heads)
    assert_close(batched[0], expected[0], 5e-5 if magnitude > 1 else 2e-5)
    for b in range(batch):
        solo = {k: (v[b : b + 1] if k != "total" else v) for k, v in feed.items()}
        alone = run.run(None, solo)
        np.testing.assert_array_equal(alone[0], batched[0][b : b + 1])
        np.testing.assert_array_equal(alone[1][:, :, : lengths[b]], batched[1][b : b + 1, :, : lengths[b]])


def test_extreme_scores_stay_finite(lib, tmp_path):
    """Huge scores saturate the softmax (outputs stay within the values attended). A bias of -FLT_MAX masks a
    column out and a query with every column masked gets 0, as in ONNX Runtime's kernel; -1e30 is a finite
    score (all equal: the query attends its columns uniformly)."""
    proto = gqa_model(4, 2, 32)
    feed = feeds(np.random.default_rng(11), 4, 2, 32, [9, 9], 3, 6, magnitude=1e3)
    feed["bias"][1, 0, 0, :] = MASKED  # row 1's first query sees no key
    out, key, value = session(rewritten(proto, tmp_path, attention_rewrite), lib).run(None, feed)
    stock = session(proto).run(None, feed)
    assert np.isfinite(out).all()
    heads = out.reshape(2, 3, 4, 32)
    for b in range(2):
        for h in range(4):
            attended = value[b, h // 2, :9]
            assert (heads[b, :, h] >= attended.min(0) - 1e-5).all() and (heads[b, :, h] <= attended.max(0) + 1e-5).all()
    assert (out[1, 0] == 0).all() and (stock[0][1, 0] == 0).all()
    feed["bias"][1, 0, 0, :] = -1e30
    out = session(rewritten(proto, tmp_path / "finite", attention_rewrite), lib).run(None, feed)[0]
    uniform = feed["past_value"][1, :, :6].astype(np.float64).sum(axis=1)  # query row 0 of row 1: 6 cached columns + itself
    uniform = (uniform + feed["qkv"][1, 0].reshape(8, 32)[6:]) / 7
    assert_close(out[1, 0].reshape(4, 32), uniform.repeat(2, axis=0))
    assert_close(out[1, 0], session(proto).run(None, feed)[0][1, 0])


def test_rewrite_takes_only_nodes_the_kernel_computes(tmp_path):
    proto = gqa_model(4, 2, 32)
    base = proto.graph.node[0]

    def variant(out: str, drop=(), **attrs) -> onnx.NodeProto:
        node = onnx.NodeProto()
        node.CopyFrom(base)
        node.output[:] = [f"{out}_{i}" for i in range(3)]
        for index in drop:
            node.input[index] = ""
        for attribute in node.attribute:
            if attribute.name in attrs:
                attribute.CopyFrom(helper.make_attribute(attribute.name, attrs.pop(attribute.name)))
        node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
        return node

    refused = [variant("interleaved", rotary_interleaved=1), variant("window", local_window_size=8), variant("softcap", softcap=30.0),
               variant("smooth", smooth_softmax=1), variant("no_seqlens", drop=(16,)), variant("no_positions", drop=(9,)),
               variant("qk", qk_output=1), variant("quant", k_quant_type="PER_TENSOR")]
    no_rotary = variant("no_rotary", drop=(7, 8), do_rotary=0)
    unpacked = variant("unpacked")
    unpacked.input[1], unpacked.input[2] = "qkv", "qkv"
    no_bias = variant("no_bias", drop=(10,))
    proto.graph.node.extend([*refused, no_rotary, unpacked, no_bias])
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    assert use_kernel_ops(path, [attention_rewrite]) == {OP: 2}
    kinds = [(n.domain, n.op_type) for n in onnx.load(str(path)).graph.node]
    gqa = (MS_DOMAIN, "GroupQueryAttention")
    assert kinds == [(DOMAIN, OP)] + [gqa] * (len(refused) + 2) + [(DOMAIN, OP)]
    rewritten_proto = onnx.load(str(path))
    assert list(rewritten_proto.graph.node[-1].input) == ["qkv", "past_key", "past_value", "seqlens_k", "total", "cos", "sin", "position_ids",
                                                          "", "query_seqlens"]
    assert [f.name for f in rewritten_proto.functions] == [OP]
    before = path.read_bytes()
    assert use_kernel_ops(path, [attention_rewrite]) == {} and path.read_bytes() == before  # nothing left to take: untouched


def test_function_definition_checks():
    function = cached_attention_function()
    assert [n.op_type for n in function.node] == ["GroupQueryAttention"]
    assert list(function.attribute) == ["num_heads", "kv_num_heads", "scale"]


def test_portable_build_gives_the_same_bits(lib, tmp_path, monkeypatch):
    """Built without AVX-512 (-march=x86-64-v2), the 16-float arrays compute the same operations in the same order."""
    monkeypatch.setenv("MLPDEPLOY_ORT_CFLAGS", "-O2 -march=x86-64-v2 -std=c11 -fPIC -pthread")
    portable = library.build_library(tmp_path / "portable")
    assert portable != lib
    for name in ("prefill-left-padded", "decode-row-lengths", "odd-heads", "long-chunk-blocks"):
        heads, kv_heads, head_size, lengths, seq, capacity, total, pads = CASES[name]
        proto = rewritten(gqa_model(heads, kv_heads, head_size), tmp_path / name, attention_rewrite)
        feed = feeds(np.random.default_rng(5), heads, kv_heads, head_size, lengths, seq, capacity, total, pads, magnitude=3.0)
        for a, b in zip(session(proto, portable).run(None, feed), session(proto, lib).run(None, feed)):
            np.testing.assert_array_equal(a, b)
    heads, kv_heads, head_size, rows, capacity, segments = RAGGED["chunk-70-and-decodes"]
    proto = with_token_rows(rewritten(gqa_model(heads, kv_heads, head_size, bias=False), tmp_path / "ragged", attention_rewrite))
    feed = ragged_feed(np.random.default_rng(5), heads, kv_heads, head_size, rows, capacity, segments, magnitude=3.0)
    for a, b in zip(session(proto, portable).run(None, feed), session(proto, lib).run(None, feed)):
        np.testing.assert_array_equal(a, b)
    x = np.linspace(-90, 88, 100_001, dtype=np.float32)
    ys = []
    for path in (portable, lib):
        exp = ctypes.CDLL(str(path)).mlpdeploy_cached_attention_exp
        exp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        ys.append(np.empty_like(x))
        exp(x.ctypes.data, ys[-1].ctypes.data, x.size)
    np.testing.assert_array_equal(ys[0], ys[1])


# ---- the ragged mode: token_rows (input 10) -----------------------------------------------------------------

def with_token_rows(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A rewritten one-node model whose CachedAttention node also takes the graph input token_rows (int32 [tokens], an empty
    initializer by default) as its input 10."""
    node = proto.graph.node[0]
    if len(node.input) <= 10 or node.input[10] != TOKEN_ROWS:
        node.input.extend([""] * (10 - len(node.input)) + [TOKEN_ROWS])
    if not any(i.name == TOKEN_ROWS for i in proto.graph.input):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(0, np.int32), TOKEN_ROWS))
        proto.graph.input.append(helper.make_tensor_value_info(TOKEN_ROWS, TensorProto.INT32, ["tokens"]))
    return proto


def without_token_rows(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with no input 10 (nor the graph input)."""
    node = proto.graph.node[0]
    del node.input[10:]
    for field in (proto.graph.input, proto.graph.initializer):
        kept = [x for x in field if x.name != TOKEN_ROWS]
        del field[:]
        field.extend(kept)
    return proto


def ragged_feed(rng, heads, kv_heads, head_size, rows, capacity, segments, magnitude=1.0) -> dict:
    """Inputs of a ragged call: `segments` [(cache row, first position, tokens)] in token order, past [rows, KV, capacity, D];
    seqlens_k, total and query_seqlens as the graph computes them from a dummy [1, 1] mask (ignored)."""
    tokens = sum(n for _, _, n in segments)
    return {
        "qkv": (rng.standard_normal((1, tokens, (heads + 2 * kv_heads) * head_size)) * magnitude).astype(np.float32),
        "past_key": rng.standard_normal((rows, kv_heads, capacity, head_size)).astype(np.float32),
        "past_value": rng.standard_normal((rows, kv_heads, capacity, head_size)).astype(np.float32),
        "seqlens_k": np.zeros(1, np.int32), "total": np.array(1, np.int32), "query_seqlens": np.ones(1, np.int32),
        "position_ids": np.concatenate([np.arange(p, p + n) for _, p, n in segments])[None].astype(np.int64),
        TOKEN_ROWS: np.concatenate([np.full(n, r) for r, _, n in segments]).astype(np.int32),
    }


def firsts(segments) -> list[int]:
    return np.cumsum([0] + [n for _, _, n in segments])[:-1].tolist()


def solo_runs(sess: ort.InferenceSession, feed: dict, segments) -> list:
    """Each segment alone in the normal mode (a one-row call on its row's past): [(output, present_key, present_value)]."""
    runs = []
    for (row, start, n), first in zip(segments, firsts(segments)):
        solo = {"qkv": feed["qkv"][:, first : first + n], "past_key": feed["past_key"][row : row + 1],
                "past_value": feed["past_value"][row : row + 1], "seqlens_k": np.array([start + n - 1], np.int32),
                "total": np.array(start + n, np.int32), "position_ids": feed["position_ids"][:, first : first + n],
                "query_seqlens": np.array([n], np.int32), TOKEN_ROWS: np.zeros(0, np.int32)}
        runs.append(sess.run(None, solo))
    return runs


def assert_ragged_is_solo(feed: dict, segments, ragged, solo) -> None:
    """Every token's output and every written cache column bit for bit its segment's solo run; all else the past's bits."""
    out, key, value = ragged
    written = np.zeros(feed["past_key"].shape[::2], bool)  # [rows, capacity]
    for (row, start, n), first, (o, k, v) in zip(segments, firsts(segments), solo):
        np.testing.assert_array_equal(out[:, first : first + n], o)
        np.testing.assert_array_equal(key[row, :, start : start + n], k[0, :, start : start + n])
        np.testing.assert_array_equal(value[row, :, start : start + n], v[0, :, start : start + n])
        written[row, start : start + n] = True
    for got, past in ((key, feed["past_key"]), (value, feed["past_value"])):
        assert got.shape == past.shape
        np.testing.assert_array_equal(got.transpose(0, 2, 1, 3)[~written], past.transpose(0, 2, 1, 3)[~written])


@pytest.fixture(scope="module")
def ragged_sessions(lib, tmp_path_factory):
    """(heads, kv heads, head size, threads[, bias]) -> (model with token_rows, its kernel session), built once."""
    built = {}

    def get(heads, kv_heads, head_size, threads=2, bias=False):
        key = (heads, kv_heads, head_size, threads, bias)
        if key not in built:
            proto = rewritten(gqa_model(heads, kv_heads, head_size, bias=bias), tmp_path_factory.mktemp("ragged"), attention_rewrite)
            proto = with_token_rows(proto)
            built[key] = proto, session(proto, lib, threads)
        return built[key]

    return get


# (heads, kv heads, head size, cache rows, capacity, segments [(row, first position, tokens)] in token order)
RAGGED = {
    "decode-only-scrambled": (9, 3, 64, 6, 40, [(4, 17, 1), (0, 3, 1), (5, 39, 1), (2, 0, 1)]),  # rows 1 and 3 unreferenced
    "chunk-5-and-decodes": (9, 3, 64, 5, 48, [(2, 10, 5), (0, 20, 1), (4, 7, 1), (1, 30, 1)]),
    "chunk-33-and-decodes": (4, 2, 32, 4, 64, [(1, 0, 33), (3, 12, 1), (0, 40, 1)]),
    "chunk-70-and-decodes": (6, 2, 48, 3, 96, [(0, 5, 70), (2, 50, 1), (1, 0, 1)]),
    "one-row-one-segment": (5, 1, 32, 1, 24, [(0, 6, 9)]),
    "prime-group": (7, 7, 16, 3, 20, [(2, 4, 3), (0, 11, 1)]),
}


@pytest.mark.parametrize("case", RAGGED)
def test_ragged_matches_the_reference_and_solo_runs(ragged_sessions, case):
    heads, kv_heads, head_size, rows, capacity, segments = RAGGED[case]
    proto, sess = ragged_sessions(heads, kv_heads, head_size)
    feed = ragged_feed(np.random.default_rng(len(case)), heads, kv_heads, head_size, rows, capacity, segments)
    out, key, value = sess.run(None, feed)
    cos, sin = tables(proto)
    t = {k: torch.from_numpy(v) for k, v in feed.items()}
    expected = ragged_cached_attention(t["qkv"], t["past_key"], t["past_value"], cos, sin, t["position_ids"], t[TOKEN_ROWS],
                                       num_heads=heads, kv_num_heads=kv_heads, scale=0.125)
    assert [out.shape, key.shape, value.shape] == [tuple(x.shape) for x in expected]
    assert out.shape == (1, feed["qkv"].shape[1], heads * head_size) and key.shape == (rows, kv_heads, capacity, head_size)
    assert_close(out, expected[0].numpy())
    assert_close(key, expected[1].numpy(), 1e-6)
    assert_close(value, expected[2].numpy(), 1e-6)
    assert_ragged_is_solo(feed, segments, (out, key, value), solo_runs(sess, feed, segments))


def test_ragged_in_place_through_io_binding(ragged_sessions):
    """The scheduler's steps: a prompt's chunks (33, then 5 tokens) with every other row's decode token, the cache bound as
    past and present: outputs and written columns bit for bit each segment's solo run, the rest of the buffer untouched."""
    heads, kv_heads, head_size, rows, capacity = 9, 3, 64, 5, 48
    _, sess = ragged_sessions(heads, kv_heads, head_size)
    rng = np.random.default_rng(17)
    cache = tuple(rng.standard_normal((rows, kv_heads, capacity, head_size)).astype(np.float32) for _ in range(2))
    for segments in ([(3, 0, 33), (0, 12, 1), (4, 30, 1), (1, 7, 1)], [(3, 33, 5), (0, 13, 1), (4, 31, 1), (1, 8, 1)]):
        feed = ragged_feed(rng, heads, kv_heads, head_size, rows, capacity, segments)
        feed["past_key"], feed["past_value"] = cache[0].copy(), cache[1].copy()
        solo = solo_runs(sess, feed, segments)
        plain = sess.run(None, feed)
        out = bound_run(sess, {k: v for k, v in feed.items() if k not in ("past_key", "past_value")}, cache)
        assert_ragged_is_solo(feed, segments, (out, *cache), solo)
        assert_ragged_is_solo(feed, segments, plain, solo)  # present a new buffer: the past copied, then written


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 5), shape=st.sampled_from([(9, 3, 64), (5, 1, 32), (4, 2, 16)]), threads=st.sampled_from([1, 2]),
       magnitude=st.sampled_from([1.0, 8.0]), data=st.data())
def test_ragged_segments_are_their_solo_runs(ragged_sessions, rows, shape, threads, magnitude, data):
    """Any rows (a random subset, in random order), segment lengths 1..40 and starts, 1 or 2 threads: every segment bit for
    bit its solo normal-mode run, unreferenced rows and columns untouched."""
    capacity = 48
    order = data.draw(st.permutations(range(rows)))
    referenced = order[: data.draw(st.integers(1, rows))]
    segments = []
    for row in referenced:
        n = data.draw(st.integers(1, 40))
        segments.append((row, data.draw(st.integers(0, capacity - n)), n))
    _, sess = ragged_sessions(*shape, threads)
    feed = ragged_feed(np.random.default_rng(rows * 100 + len(segments)), *shape, rows, capacity, segments, magnitude)
    assert_ragged_is_solo(feed, segments, sess.run(None, feed), solo_runs(sess, feed, segments))


@pytest.mark.parametrize("refusal", ["row-in-two-segments", "row-past-R", "negative-row", "position-past-capacity", "negative-position"])
def test_ragged_inputs_the_kernel_does_not_take_give_nan(ragged_sessions, refusal):
    heads, kv_heads, head_size, rows, capacity = 4, 2, 32, 3, 16
    segments = {"row-in-two-segments": [(0, 2, 3), (1, 0, 1), (0, 5, 1)], "row-past-R": [(0, 2, 3), (3, 0, 1)],
                "negative-row": [(-1, 2, 3), (1, 0, 1)], "position-past-capacity": [(0, 14, 3), (1, 0, 1)],
                "negative-position": [(0, -1, 3)]}[refusal]
    feed = ragged_feed(np.random.default_rng(2), heads, kv_heads, head_size, rows, capacity, segments)
    _, sess = ragged_sessions(heads, kv_heads, head_size)
    out = sess.run(None, feed)[0]
    assert out.shape == (1, feed["qkv"].shape[1], heads * head_size) and np.isnan(out).all()


def test_ragged_mode_ignores_the_attention_bias(ragged_sessions):
    """A ragged row holds no padding, and the builds that feed token_rows carry only the causal + padding
    mask as a bias (attention_kernels.py): whatever the bias holds, the bits of the call without one."""
    heads, kv_heads, head_size, rows, capacity, segments = RAGGED["chunk-5-and-decodes"]
    feed = ragged_feed(np.random.default_rng(2), heads, kv_heads, head_size, rows, capacity, segments)
    expected = ragged_sessions(heads, kv_heads, head_size)[1].run(None, feed)
    biased = {**feed, "bias": np.full((1, 1, feed["qkv"].shape[1], 1), -3.0e38, np.float32)}
    for a, b in zip(ragged_sessions(heads, kv_heads, head_size, bias=True)[1].run(None, biased), expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", ["prefill-left-padded", "decode-row-lengths", "long-chunk-blocks"])
def test_empty_token_rows_is_the_normal_mode(lib, tmp_path, case):
    """token_rows with no elements (the graph's default initializer, or fed): the bits of the node without input 10."""
    heads, kv_heads, head_size, lengths, seq, capacity, total, pads = CASES[case]
    bias = case != "decode-row-lengths"
    base = rewritten(gqa_model(heads, kv_heads, head_size, bias=bias), tmp_path, attention_rewrite)
    plain, ragged = onnx.ModelProto(), onnx.ModelProto()
    plain.CopyFrom(without_token_rows(base))
    ragged.CopyFrom(with_token_rows(base))
    feed = feeds(np.random.default_rng(9), heads, kv_heads, head_size, lengths, seq, capacity, total, pads, bias=bias)
    expected = session(plain, lib).run(None, feed)
    with_rows = session(ragged, lib)
    for got in (with_rows.run(None, feed), with_rows.run(None, {**feed, TOKEN_ROWS: np.zeros(0, np.int32)})):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bias", [True, False])
def test_without_the_library_an_empty_token_rows_runs_the_body(lib, tmp_path, bias):
    """Stock ONNX Runtime runs a CachedAttention node given an empty token_rows initializer: its body, GroupQueryAttention."""
    proto = gqa_model(9, 3, 64, bias=bias)
    feed = feeds(np.random.default_rng(3), 9, 3, 64, [5, 9], 2, 8, 9, bias=bias)
    ours = with_token_rows(rewritten(proto, tmp_path, attention_rewrite))
    assert list(ours.graph.node[0].input)[10:] == [TOKEN_ROWS]
    onnx.checker.check_model(ours, full_check=True)
    stock, body, kernel = session(proto).run(None, feed), session(ours).run(None, feed), session(ours, lib).run(None, feed)
    for a, b, k in zip(stock, body, kernel):
        np.testing.assert_array_equal(b, a)
        assert_close(k, a)


# ---- a zoo decoder built with --ort-kernels ---------------------------------------------------------------


@pytest.fixture(scope="module")
def small_kernels_builds(zoo_export, tmp_path_factory):
    """llama-small int4 with a KV cache built with --ort-kernels, with and without the attention rewrite."""
    import mlpdeploy.backends.onnxruntime.backend as backend_module
    from mlpdeploy.backends import get_backend
    from mlpdeploy.backends.onnxruntime import OrtOptions
    from mlpdeploy.passes import rewrite_model
    from mlpdeploy.passes.pipeline import PassSpec

    _, exported = zoo_export("llama-small", True)
    out = tmp_path_factory.mktemp("attention-kernels")
    quantized = rewrite_model(exported, out / "model.opt.onnx", [PassSpec("quantize-weights", {"format": "int4"})]).model_path
    backend = get_backend("onnxruntime")
    with_kernel = backend.build(quantized, out / "with" / "model.ort.onnx", OrtOptions(device="cpu", kernels=True))
    original = backend_module.attention_rewrite
    backend_module.attention_rewrite = lambda model: ({}, [])
    try:
        without = backend.build(quantized, out / "without" / "model.ort.onnx", OrtOptions(device="cpu", kernels=True))
    finally:
        backend_module.attention_rewrite = original
    return with_kernel, without


def test_zoo_decoder_runs_the_kernel_and_decodes_the_same_tokens(small_kernels_builds):
    from mlpdeploy.runtime.engine import Engine
    from mlpdeploy.runtime.generate import CachedGenerator

    with_kernel, without = small_kernels_builds
    assert with_kernel.info["ort_kernels"]["nodes"][OP] == 4 and OP not in without.info["ort_kernels"]["nodes"]
    graph = onnx.load(str(with_kernel.artifacts["model"]), load_external_data=False).graph
    assert sum(n.op_type == OP for n in graph.node) == 4 and not any(n.op_type == "GroupQueryAttention" for n in graph.node)
    prompts = [list(b"def main(argv):\n    "), list(b"import os"), list(b"class Stack:\n    def push(self, item):")]
    tokens = []
    for result in (with_kernel, without):
        generator = CachedGenerator(Engine.load(result.artifacts["model"]))
        tokens.append((generator.generate(prompts, 24).tokens, [generator.generate([p], 24).tokens[0] for p in prompts]))
    (batched, solo), (batched_gqa, solo_gqa) = tokens
    assert batched == solo  # a row's tokens are its solo tokens
    assert batched == batched_gqa and solo == solo_gqa
