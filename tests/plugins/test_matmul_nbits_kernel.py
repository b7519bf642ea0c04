"""MatMulInt4 / MatMulInt8, mlpdeploy's CPU kernels for MatMulNBits' 4- and 8-bit products
(plugins/matmul_nbits): inside ONNX Runtime against the torch reference, row by row the same
whatever else is in the batch, close to ONNX Runtime's own MatMulNBits, and the `--ort-kernels`
rewrite that puts them in a built model."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from mlpdeploy.backends.onnxruntime.kernels import use_kernel_ops
from mlpdeploy.backends.onnxruntime.nbits_kernels import nbits_rewrite
from mlpdeploy.contract import DOMAIN, MS_DOMAIN
from mlpdeploy.plugins.matmul_nbits.onnx_function import OPS
from mlpdeploy.plugins.matmul_nbits.reference import matmul_nbits
from mlpdeploy.plugins.ort import library

from .ort_kernel_helpers import rewritten, session

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return library.build_library(tmp_path_factory.mktemp("ort-kernels"))


def weights(k: int, n: int, asym: bool, seed: int = 0, bits: int = 4):
    """Random MatMulNBits weights: packed [N, KB, 32 * bits / 8], scales [N * KB], zero points or None."""
    rng = np.random.default_rng(seed)
    blocks = -(-k // 32)
    packed = rng.integers(0, 256, (n, blocks, 4 * bits), dtype=np.uint8)
    scales = (rng.random(n * blocks, dtype=np.float32) * 0.02 + 1e-3).astype(np.float32)
    zeros = rng.integers(0, 256, n * (blocks if bits == 8 else -(-blocks // 2)), dtype=np.uint8) if asym else None
    return packed, scales, zeros


def model(k: int, n: int, packed, scales, zeros, bits: int = 4) -> onnx.ModelProto:
    """A = [batch..., K] → one MatMulNBits node (which the rewrite turns into the kernel's op)."""
    inits = [onnx.numpy_helper.from_array(packed, "B"), onnx.numpy_helper.from_array(scales, "scales")]
    inputs = ["A", "B", "scales"]
    if zeros is not None:
        inits.append(onnx.numpy_helper.from_array(zeros, "zero_points"))
        inputs.append("zero_points")
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain=MS_DOMAIN, K=k, N=n, bits=bits, block_size=32, accuracy_level=4)
    graph = helper.make_graph([node], "m", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["b", "s", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["b", "s", n])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1)])
    return proto




def torch_reference(a: np.ndarray, packed, scales, zeros, bits: int = 4) -> np.ndarray:
    return matmul_nbits(torch.from_numpy(a), torch.from_numpy(packed), torch.from_numpy(scales),
                        None if zeros is None else torch.from_numpy(zeros), bits).numpy()


def assert_close_to_reference(y: np.ndarray, ref: np.ndarray) -> None:
    # float32 accumulation with one FMA a block vs float64: a few ulps of the largest term
    scale = max(float(np.abs(ref).max()), 1e-30)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=scale * 2e-6)


SHAPES = [(1, 1, 32, 16), (1, 1, 64, 48), (1, 3, 100, 37), (2, 5, 7, 61), (3, 1, 576, 192), (1, 17, 96, 1), (4, 3, 1536, 33)]


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("asym", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_the_torch_reference(lib, tmp_path, shape, asym, bits):
    batch, seq, k, n = shape
    packed, scales, zeros = weights(k, n, asym, bits=bits)
    a = np.random.default_rng(1).standard_normal((batch, seq, k)).astype(np.float32)
    proto = rewritten(model(k, n, packed, scales, zeros, bits), tmp_path, nbits_rewrite)
    assert [node.op_type for node in proto.graph.node] == [OPS[bits]]
    y = session(proto, lib).run(None, {"A": a})[0]
    assert y.shape == (batch, seq, n)
    assert_close_to_reference(y, torch_reference(a, packed, scales, zeros, bits))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("asym", [False, True])
def test_without_the_library_the_body_is_matmulnbits_and_close(lib, tmp_path, asym, bits):
    k, n = 200, 45
    packed, scales, zeros = weights(k, n, asym, bits=bits)
    a = np.random.default_rng(2).standard_normal((2, 3, k)).astype(np.float32)
    original = model(k, n, packed, scales, zeros, bits)
    proto = rewritten(original, tmp_path, nbits_rewrite)
    assert [(node.domain, node.op_type) for node in proto.graph.node] == [(DOMAIN, OPS[bits])]
    stock = session(original).run(None, {"A": a})[0]
    body = session(proto).run(None, {"A": a})[0]
    kernel = session(proto, lib).run(None, {"A": a})[0]
    np.testing.assert_array_equal(body, stock)  # the function body is that very MatMulNBits node
    np.testing.assert_allclose(kernel, stock, rtol=1e-4, atol=float(np.abs(stock).max()) * 1e-5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=st.integers(1, 19), k=st.sampled_from([1, 31, 32, 33, 97, 128]), n=st.sampled_from([1, 13, 16, 17, 53]),
       asym=st.booleans(), magnitude=st.sampled_from([1e-30, 1e-3, 1.0, 1e4, 1e30]), threads=st.sampled_from([1, 2]),
       bits=st.sampled_from([4, 8]))
def test_each_row_is_its_solo_result_and_the_reference(lib, tmp_path_factory, m, k, n, asym, magnitude, threads, bits):
    """Rows of any batch (1, odd, prime counts; tiny and huge values) equal their one-row results bit for bit."""
    packed, scales, zeros = weights(k, n, asym, seed=m * 1000 + k, bits=bits)
    rng = np.random.default_rng(m + n)
    a = (rng.standard_normal((1, m, k)) * magnitude).astype(np.float32)
    a[0, rng.integers(0, m)] = 0.0  # an all-zero row: codes 0, output exactly 0
    proto = rewritten(model(k, n, packed, scales, zeros, bits), tmp_path_factory.mktemp("m"), nbits_rewrite)
    run = session(proto, lib, threads)
    batched = run.run(None, {"A": a})[0]
    solo = np.concatenate([run.run(None, {"A": a[:, i : i + 1]})[0] for i in range(m)], axis=1)
    np.testing.assert_array_equal(batched, solo)
    assert np.isfinite(batched).all()
    assert_close_to_reference(batched, torch_reference(a, packed, scales, zeros, bits))


def test_an_extreme_value_saturates_only_its_own_block(lib, tmp_path):
    k, n = 64, 16
    packed, scales, zeros = weights(k, n, False)
    a = np.ones((1, 1, k), np.float32)
    a[0, 0, 0] = 3e38  # block 0 quantizes to one code; block 1 is untouched
    y = session(rewritten(model(k, n, packed, scales, zeros), tmp_path, nbits_rewrite), lib).run(None, {"A": a})[0]
    assert_close_to_reference(y, torch_reference(a, packed, scales, zeros))


def test_rewrite_takes_only_nodes_a_kernel_computes(tmp_path):
    packed, scales, _ = weights(64, 8, False)
    proto = model(64, 8, packed, scales, None)
    exact = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y0"], domain=MS_DOMAIN, K=64, N=8, bits=4, block_size=32,
                             accuracy_level=0)
    wide = helper.make_node("MatMulNBits", ["A", "B", "scales"], ["Y1"], domain=MS_DOMAIN, K=64, N=8, bits=4, block_size=64,
                            accuracy_level=4)
    packed8, scales8, _ = weights(64, 8, False, bits=8)
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(packed8, "B8"), onnx.numpy_helper.from_array(scales8, "scales8")])
    eight = helper.make_node("MatMulNBits", ["A", "B8", "scales8"], ["Y2"], domain=MS_DOMAIN, K=64, N=8, bits=8, block_size=32,
                             accuracy_level=4)
    proto.graph.node.extend([exact, wide, eight])
    proto.graph.output.extend([helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("Y0", "Y1", "Y2")])
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    assert use_kernel_ops(path, [nbits_rewrite]) == {"MatMulInt4": 1, "MatMulInt8": 1}
    kinds = [(node.domain, node.op_type) for node in onnx.load(str(path)).graph.node]
    assert kinds == [(DOMAIN, "MatMulInt4"), (MS_DOMAIN, "MatMulNBits"), (MS_DOMAIN, "MatMulNBits"), (DOMAIN, "MatMulInt8")]
    before = path.read_bytes()
    assert use_kernel_ops(path, [nbits_rewrite]) == {} and path.read_bytes() == before  # nothing left to take: untouched


def test_portable_build_gives_the_same_bits(lib, tmp_path, monkeypatch):
    """Built without AVX-512 (-march=x86-64-v2), the kernel's portable path computes the same sums in the same order."""
    monkeypatch.setenv("MLPDEPLOY_ORT_CFLAGS", "-O2 -march=x86-64-v2 -std=c11 -fPIC -pthread")
    portable = library.build_library(tmp_path / "portable")
    assert portable != lib
    k, n = 100, 37
    for asym, bits in ((False, 4), (True, 4), (False, 8), (True, 8)):
        packed, scales, zeros = weights(k, n, asym, bits=bits)
        a = np.random.default_rng(5).standard_normal((2, 7, k)).astype(np.float32)
        proto = rewritten(model(k, n, packed, scales, zeros, bits), tmp_path / f"m{asym}{bits}", nbits_rewrite)
        np.testing.assert_array_equal(session(proto, portable).run(None, {"A": a})[0], session(proto, lib).run(None, {"A": a})[0])
