"""Triton's generate extension on a cached zoo decoder (llama-tiny --kv-cache): /generate and
/generate_stream (server-sent events) give the tokens the runtime's generate loop gives; bad
generate requests get 400; SIGTERM lets a stream in flight finish, then the server exits 0."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator, Sampling

MODEL = "llama-tiny-kv"


@pytest.fixture(scope="module")
def generator(served):
    return CachedGenerator(Engine.load(served[1][MODEL]))


def _post(host: str, port: int, path: str, payload) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    return conn.getresponse()


def _events(response) -> list[dict]:
    """The JSON of every `data:` line of a server-sent event stream."""
    return [json.loads(line[len("data: "):]) for line in response.read().decode().splitlines() if line.startswith("data: ")]


def test_generate_matches_the_runtime(served, generator):
    server = served[0]
    prompt = list(b"def __init__(self")
    expected = generator.generate([prompt], 12).tokens[0]
    response = _post(server.host, server.port, f"/v2/models/{MODEL}/generate", {"id": "g1", "input_ids": prompt, "parameters": {"max_tokens": 12}})
    answer = json.loads(response.read())
    assert response.status == 200, answer
    assert answer["output_ids"] == expected and answer["finish_reason"] == "length" and answer["id"] == "g1"
    assert answer["model_name"] == MODEL and answer["model_version"] == "1"
    assert answer["text_output"] == bytes(expected).decode("utf-8", errors="replace")
    # text in (the zoo's byte tokenizer), parameters at the top level as Triton passes them on
    by_text = json.loads(_post(server.host, server.port, f"/v2/models/{MODEL}/versions/1/generate",
                               {"text_input": "def __init__(self", "max_tokens": 12}).read())
    assert by_text["output_ids"] == expected


def test_generate_stream_sends_one_event_per_token(served, generator):
    server = served[0]
    prompt = list(b"for ")
    expected = generator.generate([prompt], 10, Sampling(temperature=0.8, top_k=20, seed=3)).tokens[0]
    response = _post(server.host, server.port, f"/v2/models/{MODEL}/generate_stream",
                     {"input_ids": prompt, "parameters": {"max_tokens": 10, "temperature": 0.8, "top_k": 20, "seed": 3}})
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/event-stream")
    events = _events(response)
    assert [e["output_ids"] for e in events[:-1]] == [[t] for t in expected]
    assert events[-1]["finish_reason"] == "length" and events[-1]["output_ids"] == []
    assert "".join(e["text_output"] for e in events) == bytes(expected).decode("utf-8", errors="replace")


def test_stop_token_ends_the_generation(served, generator):
    server = served[0]
    prompt = list(b"x = ")
    full = generator.generate([prompt], 16).tokens[0]
    stop = full[4]
    answer = json.loads(_post(server.host, server.port, f"/v2/models/{MODEL}/generate",
                              {"input_ids": prompt, "parameters": {"max_tokens": 16, "stop": [stop]}}).read())
    assert answer["output_ids"] == full[: full.index(stop) + 1] and answer["finish_reason"] == "stop"


BAD = [
    ("not a decoder", "mixer-tiny", {"input_ids": [1, 2]}, "has no KV cache"),
    ("malformed JSON", MODEL, b'{"input_ids": [1,', "malformed generate request JSON"),
    ("no prompt", MODEL, {"parameters": {"max_tokens": 4}}, "give exactly one of 'text_input'"),
    ("ids not integers", MODEL, {"input_ids": ["a"]}, "'input_ids' must be a list of integers"),
    ("empty prompt", MODEL, {"input_ids": []}, "every prompt needs at least one token"),
    ("too long", MODEL, {"input_ids": [1] * 100, "max_tokens": 100}, "exceeds the model's 128 positions"),
    ("unknown parameter", MODEL, {"input_ids": [1], "parameters": {"beams": 4}}, "unknown generate parameters ['beams']"),
    ("bad sampling", MODEL, {"input_ids": [1], "parameters": {"top_p": 0}}, "0 < top_p <= 1"),
    ("multi-token stop", MODEL, {"input_ids": [1], "parameters": {"stop": ["ab"]}}, "is not a single token"),
]


@pytest.mark.parametrize("endpoint", ["generate", "generate_stream"])
@pytest.mark.parametrize("case, model, payload, message", BAD, ids=[c[0] for c in BAD])
def test_bad_generate_requests(served, case, model, payload, message, endpoint):
    server = served[0]
    response = _post(server.host, server.port, f"/v2/models/{model}/{endpoint}", payload)
    answer = json.loads(response.read())
    assert response.status == 400 and message in answer["error"], answer
    assert response.getheader("Content-Type") == "application/json"  # errors before inference are not streamed


def test_sigterm_lets_the_stream_in_flight_finish(zoo_build):
    """`mlpdeploy serve` in its own process: SIGTERM while a stream is open; the stream completes, exit 0."""
    built = zoo_build("llama-tiny", kv_cache=True)
    proc = subprocess.Popen([sys.executable, "-c", "from mlpdeploy.cli import main; main()", "serve", str(built), "--port", "0", "--log-level", "info"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            found = re.search(r"serving on http://([\d.]+):(\d+)/v2", line)
            if found:
                host, port = found.group(1), int(found.group(2))
                break
        else:
            pytest.fail("".join(lines))
        response = _post(host, port, f"/v2/models/{MODEL}/generate_stream", {"input_ids": [1, 2, 3], "parameters": {"max_tokens": 120}})
        assert response.status == 200
        first = response.readline()  # the first event arrived: the generation is running
        assert first.startswith(b"data: ")
        proc.send_signal(signal.SIGTERM)
        rest = threading.Thread(target=lambda: lines.append(response.read().decode()))
        rest.start()
        rest.join(60)
        events = [json.loads(x[6:]) for x in (first.decode() + lines[-1]).splitlines() if x.startswith("data: ")]
        assert events[-1]["finish_reason"] == "length" and sum(len(e["output_ids"]) for e in events) == 120
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Shutting down" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
