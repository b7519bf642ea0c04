"""`mlpdeploy serve` answered by the real Triton client (tritonclient.http): health, metadata,
infer with JSON and binary tensors, every bad-request case (each leaving the server healthy),
concurrent clients, and /metrics."""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlpdeploy.runtime.engine import Engine

http_client = pytest.importorskip("tritonclient.http", reason="needs tritonclient (dev extra)")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def mixer_engine(served):
    return Engine.load(served[1]["mixer-tiny"])


def _pixels(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)


def _input(x: np.ndarray, binary: bool, name: str = "pixel_values", datatype: str = "FP32"):
    tensor = http_client.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


def _healthy(client, mixer_engine) -> None:
    assert client.is_server_live() and client.is_server_ready()
    x = _pixels(2, 99)
    np.testing.assert_allclose(client.infer("mixer-tiny", [_input(x, True)]).as_numpy("logits"), mixer_engine(pixel_values=x)["logits"], rtol=1e-6)


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mixer-tiny") and client.is_model_ready("llama-tiny-kv", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("mixer-tiny", "2")
    server = client.get_server_metadata()
    assert server["name"] == "mlpdeploy" and "binary_tensor_data" in server["extensions"] and "generate" in server["extensions"]
    meta = client.get_model_metadata("mixer-tiny", "1")
    assert meta == {
        "name": "mixer-tiny", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 32, 32]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
    }
    llama = client.get_model_metadata("llama-tiny-kv")
    assert [i["name"] for i in llama["inputs"]][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert llama["inputs"][0]["datatype"] == "INT64" and llama["inputs"][0]["shape"] == [-1, -1]
    config = client.get_model_config("mixer-tiny")
    assert config["max_batch_size"] == 16 and config["input"][0]["dims"] == [3, 32, 32]
    assert sorted(m["name"] for m in client.get_model_repository_index()) == ["llama-tiny-kv", "mixer-tiny"]


@pytest.mark.parametrize("binary_in, binary_out", [(False, False), (True, True), (True, False), (False, True)])
@pytest.mark.parametrize("batch", [1, 5])
def test_infer_matches_the_engine(client, mixer_engine, binary_in, binary_out, batch):
    x = _pixels(batch, batch)
    result = client.infer("mixer-tiny", [_input(x, binary_in)], outputs=[http_client.InferRequestedOutput("logits", binary_data=binary_out)],
                          request_id="r1")
    np.testing.assert_allclose(result.as_numpy("logits"), mixer_engine(pixel_values=x)["logits"], rtol=1e-6, atol=1e-7)
    response = result.get_response()
    assert response["id"] == "r1" and response["model_name"] == "mixer-tiny" and response["model_version"] == "1"
    assert ("parameters" in response["outputs"][0]) == binary_out


def test_infer_without_outputs_returns_all_binary_and_takes_compressed_requests(client, mixer_engine):
    x = _pixels(3)
    expected = mixer_engine(pixel_values=x)["logits"]
    for compression in (None, "gzip", "deflate"):
        result = client.infer("mixer-tiny", [_input(x, True)], model_version="1", request_compression_algorithm=compression)
        np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6)
        assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == expected.nbytes


def test_infer_int64_inputs_of_a_decoder(client, served):
    """The cached decoder's raw graph through /infer: prefill with an empty cache, as the engine runs it."""
    engine = Engine.load(served[1]["llama-tiny-kv"])
    layout = engine.cache
    feed = {"input_ids": np.array([[5, 17, 42]], np.int64), "attention_mask": np.ones((1, 3), np.int64),
            "position_ids": np.arange(3, dtype=np.int64)[None]}
    for name in (n for layer in layout.layers for n in layout.input_names(layer)):
        feed[name] = np.zeros((1, layout.kv_heads, 0, layout.head_dim), np.float32)
    inputs = [_input(v, True, k, "INT64" if v.dtype == np.int64 else "FP32") for k, v in feed.items()]
    result = client.infer("llama-tiny-kv", inputs, outputs=[http_client.InferRequestedOutput("logits")])
    np.testing.assert_allclose(result.as_numpy("logits"), engine(**feed)["logits"], rtol=1e-5, atol=1e-6)


BAD_TENSORS = [
    ("unknown model", "nope", lambda limit: [_input(_pixels(1), True)], {}, 404, "Request for unknown model: 'nope' is not found"),
    ("unknown version", "mixer-tiny", lambda limit: [_input(_pixels(1), True)], {"model_version": "7"}, 404, "version 7 is not found"),
    ("wrong shape", "mixer-tiny", lambda limit: [_input(np.zeros((2, 3, 31, 32), np.float32), False)], {}, 400,
     "size 31 on axis 2, but the manifest fixes it to 32"),
    ("wrong rank", "mixer-tiny", lambda limit: [_input(np.zeros((3, 32, 32), np.float32), True)], {}, 400, "has shape [3, 32, 32], but the manifest expects"),
    ("wrong datatype", "mixer-tiny", lambda limit: [_input(_pixels(1).astype(np.float64), True, datatype="FP64")], {}, 400,
     "input 'pixel_values' of model 'mixer-tiny' is FP32, got FP64"),
    ("wrong input name", "mixer-tiny", lambda limit: [_input(_pixels(1), True, name="pixels")], {}, 400, "missing ['pixel_values']"),
    ("batch over the range", "mixer-tiny", lambda limit: [_input(np.zeros((0, 3, 32, 32), np.float32), True)], {}, 400, "outside the exported range"),
    ("unknown output", "mixer-tiny", lambda limit: [_input(_pixels(1), True)], {"outputs": [http_client.InferRequestedOutput("probs")]}, 400,
     "unexpected inference output 'probs'"),
    ("oversized body", "mixer-tiny", lambda limit: [_input(_pixels(limit // (3 * 32 * 32 * 4) + 1), True)], {}, 413, "exceeds the server's limit"),
]


@pytest.mark.parametrize("case, model, inputs, kwargs, status, message", BAD_TENSORS, ids=[c[0] for c in BAD_TENSORS])
def test_bad_requests_get_triton_errors_and_leave_the_server_healthy(served, client, mixer_engine, case, model, inputs, kwargs, status, message):
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, inputs(served[0].max_body_bytes), **kwargs)
    assert info.value.status() == str(status) and message in info.value.message(), info.value
    _healthy(client, mixer_engine)


def _raw(served, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(served[0].host, served[0].port, timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data) if data else {}


BAD_BODIES = [
    ("malformed JSON", b'{"inputs": [', {}, "malformed request JSON"),
    ("not an object", b"[1, 2]", {}, "must be a JSON object with an 'inputs' list"),
    ("data of the wrong length", json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [1.0, 2.0]}]}).encode(),
     {}, "2 values for shape [1, 3, 32, 32] (3072 expected)"),
    ("data that is not numbers", json.dumps({"inputs": [{"name": "pixel_values", "shape": [1], "datatype": "FP32", "data": ["x"]}]}).encode(),
     {}, "data is not FP32"),
    ("negative shape", json.dumps({"inputs": [{"name": "pixel_values", "shape": [-1, 3], "datatype": "FP32", "data": []}]}).encode(),
     {}, "shape must be a list of non-negative integers"),
    ("unknown datatype", json.dumps({"inputs": [{"name": "pixel_values", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}).encode(),
     {}, "unsupported datatype 'BYTES'"),
    ("binary size past the body", json.dumps({"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                                            "parameters": {"binary_data_size": 12288}}]}).encode() + b"\0" * 16,
     "header", "runs past the request body"),
    ("header length past the body", b"{}", {"Inference-Header-Content-Length": "99"}, "is beyond the body's 2 bytes"),
    ("bad compression", b"not gzip", {"Content-Encoding": "gzip"}, "not valid gzip"),
]


@pytest.mark.parametrize("case, body, headers, message", BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_malformed_bodies_get_400(served, client, mixer_engine, case, body, headers, message):
    if headers == "header":
        headers = {"Inference-Header-Content-Length": str(len(body) - 16)}
    status, answer = _raw(served, "POST", "/v2/models/mixer-tiny/infer", body, headers)
    assert status == 400 and message in answer["error"], answer
    _healthy(client, mixer_engine)


def test_oversized_content_length_and_unknown_endpoint(served, client, mixer_engine):
    status, answer = _raw(served, "POST", "/v2/models/mixer-tiny/infer", b"x" * (served[0].max_body_bytes + 1))
    assert status == 413 and "exceeds the server's limit" in answer["error"]
    status, answer = _raw(served, "GET", "/v2/nothing/here")
    assert status == 404 and answer == {"error": "no such endpoint: GET /v2/nothing/here"}
    status, answer = _raw(served, "GET", "/v2/models/mixer-tiny/infer")
    assert status == 405 and "error" in answer
    _healthy(client, mixer_engine)


def test_concurrent_clients_each_get_their_answer(served, mixer_engine):
    feeds = [_pixels(1 + i % 4, seed=100 + i) for i in range(32)]

    def work(indices):
        c = http_client.InferenceServerClient(served[0].url)
        try:
            return [(i, c.infer("mixer-tiny", [_input(feeds[i], True)]).as_numpy("logits")) for i in indices]
        finally:
            c.close()

    with ThreadPoolExecutor(8) as pool:
        results = [r for chunk in pool.map(work, [range(k, 32, 8) for k in range(8)]) for r in chunk]
    assert len(results) == 32
    for i, logits in results:
        np.testing.assert_allclose(logits, mixer_engine(pixel_values=feeds[i])["logits"], rtol=1e-6)


def test_metrics_in_prometheus_text_format(served, client):
    from prometheus_client.parser import text_string_to_metric_families

    client.infer("mixer-tiny", [_input(_pixels(3), True)])
    with pytest.raises(InferenceServerException):
        client.infer("mixer-tiny", [_input(_pixels(1), True, name="pixels")])
    conn = http.client.HTTPConnection(served[0].host, served[0].port)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    ok = samples[("mlpdeploy_requests_total", (("endpoint", "infer"), ("model", "mixer-tiny"), ("outcome", "success")))]
    bad = samples[("mlpdeploy_requests_total", (("endpoint", "infer"), ("model", "mixer-tiny"), ("outcome", "client_error")))]
    assert ok >= 1 and bad >= 1
    assert samples[("mlpdeploy_inference_count_total", (("model", "mixer-tiny"),))] >= 3
    assert samples[("mlpdeploy_request_duration_seconds_count", (("endpoint", "infer"), ("model", "mixer-tiny")))] == ok


def test_docs_client_script_runs_unchanged(served, capsys):
    """The tritonclient script in docs/serving.md, pointed at this server (its model names swapped for the test's)."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text()
    script = next(block.split("```", 1)[0] for block in page.split("```python")[1:] if "tritonclient.http as httpclient" in block)
    script = script.replace("localhost:8000", served[0].url).replace("llama-small", "llama-tiny-kv")
    exec(compile(script, "docs/serving.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert "'name': 'mixer-tiny'" in out[0] and out[1].startswith("[") and len(out) >= 3
