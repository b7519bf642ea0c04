"""`Engine`: load a built artifact, call it with keyword arrays, every input checked against the manifest."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.engine import Engine


@pytest.fixture(scope="module")
def mixer(zoo_build):
    return Engine.load(zoo_build("mixer-tiny"))


def _pixels(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def test_call_matches_onnxruntime_and_casts(mixer):
    raw = ort.InferenceSession(str(mixer.path), providers=["CPUExecutionProvider"])
    for batch in (1, 3, 7):
        x = _pixels(batch, batch)
        got = mixer(pixel_values=x)
        assert list(got) == ["logits"] and got["logits"].shape == (batch, 10)
        np.testing.assert_allclose(got["logits"], raw.run(None, {"pixel_values": x})[0], rtol=1e-5, atol=1e-6)
    # float64 is cast to the manifest's float32
    np.testing.assert_allclose(mixer(pixel_values=_pixels(2).astype(np.float64))["logits"], mixer(pixel_values=_pixels(2))["logits"])
    assert mixer.runtime == "onnxruntime"


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({}, r"missing \['pixel_values'\]"),
        ({"pixel_values": _pixels(1), "x": _pixels(1)}, r"unexpected \['x'\]"),
        ({"pixel_values": np.zeros((3, 32, 32), np.float32)}, r"has shape \[3, 32, 32\], but the manifest expects \[batchx3x32x32\]"),
        ({"pixel_values": np.zeros((1, 3, 31, 32), np.float32)}, r"size 31 on axis 2, but the manifest fixes it to 32"),
        ({"pixel_values": np.zeros((0, 3, 32, 32), np.float32)}, r"dim batch=0 is outside the exported range \[1, 4096\]"),
        ({"pixel_values": np.zeros((1, 3, 32, 32), np.int64)}, r"has dtype int64, but the manifest expects float32"),
    ],
)
def test_bad_inputs_name_the_problem(mixer, inputs, message):
    with pytest.raises(MlpdeployError, match=message):
        mixer(**inputs)


def test_dims_shared_between_inputs_must_agree(zoo_build):
    engine = Engine.load(zoo_build("llama-tiny", kv_cache=True))
    feed = {s.name: np.zeros([2 if d == "batch" else 3 if isinstance(d, str) else d for d in s.shape], np.float32 if s.dtype == "float32" else np.int64)
            for s in engine.manifest.inputs}
    feed["input_ids"] = np.zeros((3, 3), np.int64)
    with pytest.raises(MlpdeployError, match="dim batch is 3 in one input and 2 in attention_mask; it must agree"):
        engine(**feed)


def test_concurrent_calls_from_many_threads(mixer):
    """Every thread gets its own inputs' answer: the same as a sequential call."""
    feeds = [_pixels(1 + i % 5, seed=i) for i in range(48)]
    expected = [mixer(pixel_values=x)["logits"] for x in feeds]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda x: mixer(pixel_values=x)["logits"], feeds))
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_tensorrt_engine_without_its_runtime_names_the_extra(fake_engine):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("datacenter TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(MlpdeployError, match=r"tensorrt is not installed for running tensorrt engines: pip install 'mlpdeploy\[tensorrt\]'"):
        Engine.load(fake_engine("tensorrt"))


def test_tensorrt_rtx_engine_needs_a_gpu(fake_engine):
    pytest.importorskip("tensorrt_rtx_bindings", reason="needs the rtx extra")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(MlpdeployError, match="running a TensorRT engine needs a CUDA GPU"):
        Engine.load(fake_engine("tensorrt-rtx"))


def test_load_errors(tmp_path, zoo_build):
    with pytest.raises(MlpdeployError, match="does not exist"):
        Engine.load(tmp_path / "nothing.onnx")
    with pytest.raises(MlpdeployError, match="directory without report.json"):
        Engine.load(tmp_path)
    lonely = tmp_path / "lonely.onnx"
    shutil.copy(zoo_build("mixer-tiny"), lonely)
    with pytest.raises(MlpdeployError, match="no manifest beside"):
        Engine.load(lonely)
