"""The real Triton Inference Server (the nvidia-pytriton wheel's tritonserver 2.51) on repositories that
`mlpdeploy package` writes, driven by tritonclient and Triton's generate endpoints.

Python backend (`--triton-backend python`, one server for the module): a zoo classifier (mixer-tiny)
answers dynamic-batched infer requests, and a cached decoder (llama-tiny --kv-cache) answers /generate,
/generate_stream and gRPC streams — every answer equal to `mlpdeploy.runtime`'s. Native backends
(today's default): the bundled server has no onnxruntime or tensorrt backend, so the test asserts that
their configs parse and only the backend is missing. A server that cannot start fails the test with its log.
"""

from __future__ import annotations

import json
import queue
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator, Sampling
from mlpdeploy.serving.package import package_triton
from mlpdeploy.serving.triton_config import TritonOptions
from mlpdeploy.serving.tritonserver import WHEEL, TritonServer

http = pytest.importorskip("tritonclient.http", reason="needs tritonclient (dev extra)")
grpc = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc] (dev extra)")
from tritonclient.utils import InferenceServerException  # noqa: E402

DECODER, CLASSIFIER = "llama-tiny-kv", "mixer-tiny"
QUEUE_DELAY_US = 50_000  # long enough that requests sent together meet in the dynamic batcher on a loaded machine


def _start(repo: Path, extra: list[str] = ()) -> TritonServer:
    server = TritonServer(repo, extra)
    try:
        return server.start()  # raises with the server's log: a machine where it cannot start fails here, never skips
    except BaseException:
        server.remove_log()
        raise


@pytest.fixture(scope="module")
def builds(zoo_build):
    return {CLASSIFIER: zoo_build("mixer-tiny"), DECODER: zoo_build("llama-tiny", kv_cache=True)}


@pytest.fixture(scope="module")
def triton(builds, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton") / "repo"
    package_triton(list(builds.values()), repo, TritonOptions(max_queue_delay_us=QUEUE_DELAY_US), backend="python")
    server = _start(repo)
    yield server
    server.stop()
    server.remove_log()


@pytest.fixture(scope="module")
def generator(builds):
    return CachedGenerator(Engine.load(builds[DECODER]))


def _post(server: TritonServer, path: str, payload: dict) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{server.url}{path}", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _ids(value) -> list[int]:
    """Triton's JSON writes a one-element tensor as a scalar."""
    return value if isinstance(value, list) else [value]


def test_the_bundled_wheel_is_the_one_make_setup_installs():
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    assert f"TRITONSERVER_WHEEL := {WHEEL}" in makefile


def test_a_port_taken_before_the_server_binds_it_is_chosen_again(tmp_path):
    import socket

    (tmp_path / "empty").mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        server = TritonServer(tmp_path / "empty")
        server.http_port = taken.getsockname()[1]
        with server:
            assert server.http_port != taken.getsockname()[1]
            with urllib.request.urlopen(f"http://{server.url}/v2/health/ready", timeout=10) as response:
                assert response.status == 200


def test_a_server_that_cannot_start_fails_with_its_log(tmp_path):
    with pytest.raises(MlpdeployError, match="(?s)tritonserver exited with status .*its log:.*failed to stat file"):
        _start(tmp_path / "missing")


def test_infer_is_dynamically_batched_and_equals_the_runtime(triton, builds):
    engine = Engine.load(builds[CLASSIFIER])
    rng = np.random.default_rng(0)
    images = [rng.standard_normal((rows, 3, 32, 32)).astype(np.float32) for rows in (1, 2, 3, 1, 2, 1)]
    client = http.InferenceServerClient(triton.url, concurrency=len(images))
    before = client.get_inference_statistics(CLASSIFIER)["model_stats"][0]["execution_count"]

    def request(x):
        tensor = http.InferInput("pixel_values", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        return client.async_infer(CLASSIFIER, [tensor])

    pending = [request(x) for x in images]
    for x, answer in zip(images, pending):
        logits = answer.get_result().as_numpy("logits")
        expected = engine(pixel_values=x)["logits"]
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
        assert (logits.argmax(-1) == expected.argmax(-1)).all()
    executions = client.get_inference_statistics(CLASSIFIER)["model_stats"][0]["execution_count"] - before
    client.close()
    assert executions < len(images), f"{len(images)} requests sent together ran in {executions} executions: the dynamic batcher merged none"


def test_generate_equals_the_runtime(triton, generator):
    prompt = list(b"def __init__(self")
    status, body = _post(triton, f"/v2/models/{DECODER}/generate", {"input_ids": prompt, "max_tokens": 12})
    assert status == 200, body
    assert _ids(json.loads(body)["output_ids"]) == generator.generate([prompt], 12).tokens[0]
    # sampling settings as the generate endpoint's parameters: the runtime's sampler with the same seed
    status, body = _post(triton, f"/v2/models/{DECODER}/generate",
                         {"input_ids": prompt, "parameters": {"max_tokens": 9, "temperature": 0.8, "top_k": 20, "seed": 5}})
    assert status == 200, body
    assert _ids(json.loads(body)["output_ids"]) == generator.generate([prompt], 9, Sampling(temperature=0.8, top_k=20, seed=5)).tokens[0]


def test_concurrent_generations_each_equal_their_solo_answer(triton, generator):
    prompts = [list(b"import "), list(b"class Foo("), list(b"    return "), list(b"# ")]
    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(lambda p: _post(triton, f"/v2/models/{DECODER}/generate", {"input_ids": p, "max_tokens": 10}), prompts))
    for prompt, (status, body) in zip(prompts, answers):
        assert status == 200, body
        assert _ids(json.loads(body)["output_ids"]) == generator.generate([prompt], 10).tokens[0]


def test_generate_stream_sends_one_event_per_token(triton, generator):
    prompt = list(b"for ")
    status, body = _post(triton, f"/v2/models/{DECODER}/generate_stream", {"input_ids": prompt, "max_tokens": 8, "stream": True})
    assert status == 200, body
    events = [json.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]
    expected = generator.generate([prompt], 8).tokens[0]
    assert [_ids(e["output_ids"]) for e in events[:-1]] == [[t] for t in expected]
    assert _ids(events[-1]["output_ids"]) == []  # the last response closes the stream


def test_grpc_stream_equals_the_runtime(triton, generator):
    prompt = list(b"while True:")
    client = grpc.InferenceServerClient(triton.grpc_url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    tensors = []
    for name, value, datatype in (("input_ids", np.array(prompt, np.int64), "INT64"), ("max_tokens", np.array([7], np.int32), "INT32"),
                                  ("stream", np.array([True]), "BOOL")):
        tensor = grpc.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    client.async_stream_infer(DECODER, tensors, request_id="s1", enable_empty_final_response=True)
    tokens, responses = [], 0
    while True:
        result, error = results.get(timeout=120)
        assert error is None, error
        responses += 1
        tokens += result.as_numpy("output_ids").tolist()
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    client.close()
    assert tokens == generator.generate([prompt], 7).tokens[0] and responses == len(tokens) + 1


def test_a_cancelled_grpc_stream_leaves_the_scheduler_at_once(triton, generator):
    """tritonclient's stop_stream(cancel_requests=True) after the first token: the Python backend's
    scheduler lets the request go at its next token (the server's log says so, with no row active and
    no budget reserved after it), and the next request is answered as the runtime answers it."""
    prompt, max_tokens = list(b"if "), generator.layout.max_positions - 3
    client = grpc.InferenceServerClient(triton.grpc_url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    tensors = []
    for name, value, datatype in (("input_ids", np.array(prompt, np.int64), "INT64"), ("max_tokens", np.array([max_tokens], np.int32), "INT32"),
                                  ("stream", np.array([True]), "BOOL")):
        tensor = grpc.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    client.async_stream_infer(DECODER, tensors, request_id="c1")
    result, error = results.get(timeout=120)
    assert error is None, error
    client.stop_stream(cancel_requests=True)
    client.close()
    deadline, line = time.monotonic() + 60, None
    while line is None and time.monotonic() < deadline:
        line = next((x for x in triton.log().splitlines() if "a cancelled request left after" in x), None)
        time.sleep(0.1)
    assert line is not None, triton.log()[-2000:]
    left_after = int(re.search(r"left after (\d+) of (\d+) tokens", line).group(1))
    assert 1 <= left_after < max_tokens, line
    assert "'active': 0" in line and "'reserved_tokens': 0" in line, line
    status, body = _post(triton, f"/v2/models/{DECODER}/generate", {"input_ids": prompt, "max_tokens": 5})
    assert status == 200 and _ids(json.loads(body)["output_ids"]) == generator.generate([prompt], 5).tokens[0], body


def test_text_follows_what_the_python_backend_can_do(triton, generator):
    """Strings need a Python backend whose numpy path is sound: the bundled 24.10 stub's is not under
    numpy >= 2, and the model says so once and answers token ids only; elsewhere text comes back."""
    prompt = list(b"def ")
    status, body = _post(triton, f"/v2/models/{DECODER}/generate", {"input_ids": prompt, "max_tokens": 5})
    assert status == 200, body
    answer, expected = json.loads(body), generator.generate([prompt], 5).tokens[0]
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert "predates numpy-2 support" in triton.log()
        assert "text_output" not in answer and "finish_reason" not in answer
    else:
        assert answer["text_output"] == bytes(expected).decode("utf-8", errors="replace") and answer["finish_reason"] == "length"


@pytest.mark.parametrize(("payload", "message"), [
    ({"input_ids": [1, 2], "max_tokens": 0}, "max_new_tokens must be at least 1, got 0"),
    ({"max_tokens": 4}, "give exactly one of 'text_input'"),
    ({"input_ids": [1] * 4096, "max_tokens": 4}, "exceeds the model's"),
    ({"input_ids": [1, 2], "parameters": {"max_tokens": 2, "beam_width": 4}}, "unknown generate parameters ['beam_width']"),
])
def test_bad_generate_requests_get_one_line_errors(triton, payload, message):
    status, body = _post(triton, f"/v2/models/{DECODER}/generate", payload)
    assert status == 400 and message in json.loads(body)["error"], body
    status, body = _post(triton, f"/v2/models/{DECODER}/generate", {"input_ids": [1, 2], "max_tokens": 2})
    assert status == 200, body  # the model keeps answering


def test_native_repositories_parse_and_only_their_backends_are_missing(builds, fake_engine, tmp_path):
    """Today's default repositories (onnxruntime_onnx, tensorrt_plan) on the real server: each config parses
    and the load stops at the missing backend library; a malformed config fails earlier, at parsing (the control)."""
    repo = tmp_path / "repo"
    package_triton([*builds.values(), fake_engine("tensorrt")], repo)
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "config.pbtxt").write_text('name: "broken"\nplatform: "onnxruntime_onnx"\ninput { name: "x" data_type: TYPE_NOT_A_TYPE }\n')
    server = _start(repo, ["--model-control-mode=explicit"])
    try:
        client = http.InferenceServerClient(server.url)
        for name, backend in ((CLASSIFIER, "onnxruntime"), (DECODER, "onnxruntime"), ("m", "tensorrt")):
            with pytest.raises(InferenceServerException) as failure:
                client.load_model(name)
            assert f"unable to find backend library for backend '{backend}'" in str(failure.value), str(failure.value)
        with pytest.raises(InferenceServerException, match="failed to poll from model repository"):
            client.load_model("broken")
        client.close()
        log = server.log()
        assert f"failed to read text proto from {repo.resolve()}/broken/config.pbtxt" in log
        assert log.count("failed to read text proto") == 1 and log.count("Error parsing text-format inference.ModelConfig") == 1
    finally:
        server.stop()
        server.remove_log()


def test_without_the_wheel_the_error_names_the_install(monkeypatch, capsys):
    import importlib.util

    from mlpdeploy.serving import tritonserver

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else real(name, *a))
    with pytest.raises(MlpdeployError, match=r"comes with the nvidia-pytriton wheel: pip install --no-deps 'nvidia-pytriton==0.7.0'"):
        tritonserver.find_bundle()
    assert tritonserver.main(["some-repo"]) == 2
    assert "pip install --no-deps" in capsys.readouterr().err


@pytest.fixture(scope="module")
def numpy1_env(tmp_path_factory):
    """A Python environment whose numpy is 1.x and whose other packages are this one's (a .pth file):
    the Python backend of the bundled 24.10 server handles strings there."""
    import subprocess
    import sys
    import sysconfig
    import venv

    env = tmp_path_factory.mktemp("numpy1") / "env"
    venv.create(env, with_pip=False)
    site = env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                          "--target", str(site), "numpy>=1.26,<2"], capture_output=True, text=True)
    assert pip.returncode == 0, f"installing numpy<2 for the execution environment failed:\n{pip.stderr[-2000:]}"
    (site / "zz_mlpdeploy_env.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    return env


@pytest.mark.slow
def test_text_on_the_bundled_server_with_numpy1_in_the_execution_env(builds, generator, numpy1_env, tmp_path):
    """text_input, text_output, finish_reason and stop strings through the real server: the string paths
    the numpy-2 probe turns off on the bundled server, run where its Python backend handles strings."""
    repo = tmp_path / "repo"
    package_triton([builds[DECODER]], repo, backend="python", python_env=str(numpy1_env))
    server = _start(repo)
    try:
        expected = generator.generate([list(b"def ")], 6).tokens[0]
        status, body = _post(server, f"/v2/models/{DECODER}/generate", {"text_input": "def ", "max_tokens": 6})
        assert status == 200, body
        answer = json.loads(body)
        assert _ids(answer["output_ids"]) == expected and answer["finish_reason"] == "length"
        assert answer["text_output"] == bytes(expected).decode("utf-8", errors="replace")
        at = next(i for i, token in enumerate(expected) if i > 0 and token < 128)  # the byte tokenizer: an ASCII character is one token
        status, body = _post(server, f"/v2/models/{DECODER}/generate_stream",
                             {"text_input": "def ", "max_tokens": 6, "stream": True, "parameters": {"stop": chr(expected[at])}})
        assert status == 200, body
        events = [json.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]
        assert [t for e in events for t in _ids(e["output_ids"])] == expected[:at + 1] and events[-1]["finish_reason"] == "stop"
        assert "".join(e["text_output"] for e in events) == bytes(expected[:at + 1]).decode("utf-8", errors="replace")
        assert "predates numpy-2 support" not in server.log()
    finally:
        server.stop()
        server.remove_log()
