"""mlpdeploy's compiled ONNX Runtime CPU kernels: build, ABI checks, and GroupRational inside ONNX
Runtime vs the torch reference (the same model runs the kernel with the library registered and
the portable function body without it)."""

from __future__ import annotations

import shutil

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.plugins.group_rational.onnx_function import make_model
from mlpdeploy.plugins.group_rational.reference import group_rational
from mlpdeploy.plugins.ort import library

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return library.build_library(tmp_path_factory.mktemp("ort-kernels"))


def session(model: ir.Model, lib=None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if lib is not None:
        library.register(options, lib)
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])


def reference(model: ir.Model, x: np.ndarray, form: str) -> np.ndarray:
    w = {k: torch.from_numpy(v.const_value.numpy()) for k, v in model.graph.initializers.items()}
    return group_rational(torch.from_numpy(x), w["numerator"], w["denominator"], form).numpy()


def test_build_is_cached_and_tagged(lib, tmp_path):
    assert lib.name == library.LIBRARY_NAME and library.build_library(lib.parent.parent) == lib
    library.check_library(lib)
    bogus = tmp_path / "libbogus.so"
    bogus.write_bytes(b"not a library")
    with pytest.raises(MlpdeployError, match="is not an mlpdeploy ONNX Runtime kernel library"):
        library.check_library(bogus)
    with pytest.raises(MlpdeployError, match="does not exist; rebuild with --ort-kernels"):
        library.check_library(tmp_path / "missing.so")


def test_missing_compiler_is_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    with pytest.raises(MlpdeployError, match=r"^no C compiler found \(looked for no-such-compiler-xyz\) .* build without --ort-kernels"):
        library.build_library(tmp_path / "k")
    assert not (tmp_path / "k").exists()


def test_compile_error_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("MLPDEPLOY_ORT_CFLAGS", "-O2 --no-such-flag-xyz")
    with pytest.raises(MlpdeployError, match="compiling mlpdeploy's ONNX Runtime CPU kernels failed"):
        library.build_library(tmp_path / "k")
    assert not list((tmp_path / "k").rglob("*.so"))


def test_onnxruntime_version_check(monkeypatch):
    monkeypatch.setattr(ort, "__version__", "2.0.0")
    with pytest.raises(MlpdeployError, match=r"need onnxruntime 1\.x >= 1\.13 .* found 2\.0\.0"):
        library.check_onnxruntime()


@pytest.mark.parametrize("degrees", [(5, 4), (3, 2)], ids=["unrolled-5-4", "generic-3-2"])
@pytest.mark.parametrize("shared", [False, True], ids=["per-group", "shared"])
@pytest.mark.parametrize("form", ["A", "B"])
def test_kernel_matches_reference_and_body(lib, form, shared, degrees):
    model = make_model(35, 7, form=form, shared_numerator=shared, degrees=degrees, seed=2)  # 7 groups of 5
    x = np.random.default_rng(1).uniform(-10, 10, (3, 4, 35)).astype(np.float32)
    ref = reference(model, x, form)
    kernel, body = session(model, lib).run(None, {"x": x})[0], session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(kernel, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())
    np.testing.assert_allclose(body, ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max())


def test_kernel_uses_threads_on_large_inputs(lib, monkeypatch):
    """Above 64 Ki elements the rows are split across threads: same answer as one thread."""
    model = make_model(768, 8, seed=3)
    x = np.random.default_rng(2).standard_normal((4, 197, 768)).astype(np.float32)
    monkeypatch.setenv("MLPDEPLOY_ORT_THREADS", "1")
    one = session(model, lib).run(None, {"x": x})[0]
    monkeypatch.setenv("MLPDEPLOY_ORT_THREADS", "3")
    np.testing.assert_array_equal(session(model, lib).run(None, {"x": x})[0], one)
    np.testing.assert_allclose(one, reference(model, x, "A"), rtol=1e-6, atol=1e-5)


def test_library_takes_precedence_over_the_function_body(lib):
    """Proof the kernel runs: give the model a wrong body (y = x); with the library the answer is still P/Q."""
    model = make_model(8, 2, rank=2)
    function = next(iter(model.functions.values()))
    identity = ir.Node("", "Identity", [function.inputs[0]], num_outputs=1)
    function.append(identity)
    function.outputs[0] = identity.outputs[0]
    identity.outputs[0].name = "y_identity"
    x = np.linspace(-3, 3, 16, dtype=np.float32).reshape(2, 8)
    np.testing.assert_array_equal(session(model).run(None, {"x": x})[0], x)
    np.testing.assert_allclose(session(model, lib).run(None, {"x": x})[0], reference(model, x, "A"), rtol=1e-6, atol=1e-6)


def test_inputs_it_cannot_take_give_nan(lib):
    """A version-13 kernel cannot return an error: shapes the op refuses give NaN, never garbage."""
    model = make_model(8, 2, rank=2)
    model.graph.inputs[0].shape = ir.Shape(["b", "c"])
    model.graph.outputs[0].shape = ir.Shape(["b", "c"])
    y = session(model, lib).run(None, {"x": np.ones((2, 7), np.float32)})[0]  # 7 channels, 2 groups
    assert y.shape == (2, 7) and np.isnan(y).all()


def test_float16_model_is_refused_by_onnxruntime_with_the_library(lib):
    """Why `--ort-kernels` refuses non-float32 nodes up front: ONNX Runtime rejects them at load."""
    with pytest.raises(Exception, match="float16"):
        session(make_model(8, 2, dtype="float16"), lib)


@settings(max_examples=15, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 3, 8]),
    per_group=st.sampled_from([1, 3, 5, 96]),
    rows=st.sampled_from([1, 2, 7]),
    form=st.sampled_from(["A", "B"]),
    shared=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 10.0, 1e31]),
    seed=st.integers(0, 2**16),
)
def test_kernel_property(groups, per_group, rows, form, shared, scale, seed, tmp_path_factory):
    lib = library.build_library(tmp_path_factory.getbasetemp() / "ort-kernels-property")
    model = make_model(groups * per_group, groups, form=form, shared_numerator=shared, rank=2, seed=seed)
    x = (np.random.default_rng(seed).uniform(-10, 10, (rows, groups * per_group)) * scale).astype(np.float32)
    x.flat[0] = 1e-40  # a denormal
    y, ref = session(model, lib).run(None, {"x": x})[0], reference(model, x, form)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(ref[finite]).max(initial=0))))
