"""The generate endpoint takes chat messages for a model with a chat template (real SmolLM2, 4 layers)."""

from __future__ import annotations

import http.client
import json

import pytest

from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator
from mlpdeploy.runtime.tokenizer import chat_messages, tokenizer_for

MODEL = "smollm2-4l-kv"


@pytest.fixture(scope="module")
def chat_server(smollm2_small_kv):
    pytest.importorskip("uvicorn", reason="needs the serve extra")
    from mlpdeploy.serving.server import Server

    server = Server([smollm2_small_kv], port=0).start()
    yield server
    server.stop()


def _post(server, path: str, payload: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
    conn.request("POST", path, body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def test_messages_are_formatted_with_the_chat_template(chat_server, smollm2_small_kv):
    engine = Engine.load(smollm2_small_kv)
    messages = chat_messages("Name a prime number.", "Be brief.")
    ids = tokenizer_for(engine.manifest, smollm2_small_kv).encode_chat(messages)
    expected = CachedGenerator(engine).generate([ids], 6, stop_tokens=[2]).tokens[0]
    status, answer = _post(chat_server, f"/v2/models/{MODEL}/generate", {"messages": messages, "parameters": {"max_tokens": 6}})
    assert status == 200, answer
    assert answer["output_ids"] == expected


@pytest.mark.parametrize("payload, message", [
    ({"messages": [{"role": "user"}]}, "message 0 must be an object"),
    ({"messages": "hi"}, "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}], "text_input": "hi"}, "give exactly one of"),
])
def test_bad_messages_are_400(chat_server, payload, message):
    status, answer = _post(chat_server, f"/v2/models/{MODEL}/generate", payload)
    assert status == 400 and message in answer["error"], answer


def test_messages_for_a_model_without_a_template(served):
    server = served[0]
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request("POST", "/v2/models/llama-tiny-kv/generate", body=json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode())
    response = conn.getresponse()
    assert response.status == 400 and "has no chat template" in json.loads(response.read())["error"]
