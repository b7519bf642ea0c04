"""`mlpdeploy serve` generates through the in-flight scheduler: concurrent requests get their solo
answers; a full queue is a 503 with Triton's error body and the server stays healthy; a prompt
longer than the model's context is a 400; a client that disconnects (streaming or not) cancels its
sequence and frees its row; /metrics has the scheduler's histograms."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest

from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator
from mlpdeploy.runtime.scheduler import Scheduler, SchedulerOptions

MODEL = "llama-tiny-kv"
IDLE = {"active": 0, "prefilling": 0, "joining": 0, "admitted": 0, "waiting": 0, "reserved_tokens": 0}


@pytest.fixture(scope="module")
def batched(zoo_build):
    """A server whose decoder batches 2 sequences at most, with 1 more waiting at most."""
    pytest.importorskip("uvicorn", reason="needs the serve extra")
    from mlpdeploy.serving.server import Server

    path = zoo_build("llama-tiny", kv_cache=True)
    server = Server([path], port=0, batching=SchedulerOptions(max_batch=2, max_queue_size=1)).start()
    yield server, server.models[MODEL].scheduler, CachedGenerator(Engine.load(path))
    server.stop()


class Gate:
    """A scheduler observer that holds the loop after each decode step of `rows` rows or more while closed."""

    def __init__(self):
        self.open, self.held = threading.Event(), threading.Event()
        self.rows = 1

    def step(self, rows, seconds):
        if not self.open.is_set() and rows >= self.rows:
            self.held.set()
            self.open.wait(30)

    def finished(self, request):
        pass


@pytest.fixture
def gate(batched):
    gate = Gate()
    gate.open.set()
    batched[1].observers.append(gate)
    yield gate
    gate.open.set()
    batched[1].observers.remove(gate)
    _wait_idle(batched[1])


def _wait_idle(scheduler: Scheduler, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while scheduler.stats() != IDLE:
        assert time.monotonic() < deadline, scheduler.stats()
        time.sleep(0.01)


def _fill_batch(scheduler: Scheduler, gate: Gate) -> list:
    """Two long generations in the batch of 2, the loop then held after a step of both."""
    gate.rows = 1
    gate.open.clear()
    holders = [scheduler.submit(list(b"abc"), 100)]
    assert gate.held.wait(30)  # held after the first one's first step: it cannot finish before the second joins
    holders.append(scheduler.submit(list(b"xyz"), 100))
    gate.rows = 2
    gate.held.clear()
    gate.open.set()  # releases the held step (Event.wait returns once set) ...
    gate.open.clear()  # ... and holds again after the first step of both
    assert gate.held.wait(30)
    return holders


def _post(server, path: str, payload: dict) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request("POST", path, body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def _until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_concurrent_requests_get_their_solo_answers(batched):
    server, scheduler, solo = batched
    prompts = [list(b"def __init__(self"), list(b"import os\n"), list(b"for i in range("), list(b"x = "), list(b"class ")]
    expected = [solo.generate([p], 10 + i).tokens[0] for i, p in enumerate(prompts)]
    answers: dict[int, list[int]] = {}

    def one(i: int) -> None:
        stream = i % 2 == 1
        while True:  # 2 generate at once and 1 waits: the others are told 503 and try again, as a client does
            status, body = _post(server, f"/v2/models/{MODEL}/generate{'_stream' if stream else ''}",
                                 {"input_ids": prompts[i], "parameters": {"max_tokens": 10 + i}})
            if status != 503:
                break
            time.sleep(0.02)
        assert status == 200, body
        if stream:
            events = [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: ")]
            answers[i] = [t for e in events for t in e["output_ids"]]
        else:
            answers[i] = json.loads(body)["output_ids"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [answers[i] for i in range(len(prompts))] == expected
    _wait_idle(scheduler)


def test_queue_full_is_503_and_the_server_stays_healthy(batched, gate):
    server, scheduler, solo = batched
    holders = _fill_batch(scheduler, gate)
    queued: dict = {}
    waiter = threading.Thread(target=lambda: queued.update(r=_post(server, f"/v2/models/{MODEL}/generate", {"input_ids": [1, 2], "max_tokens": 3})))
    waiter.start()
    _until(lambda: scheduler.stats()["waiting"] == 1)
    status, body = _post(server, f"/v2/models/{MODEL}/generate", {"input_ids": [1, 2], "max_tokens": 3})
    assert status == 503 and json.loads(body) == {"error": "Exceeds maximum queue size"}
    status, body = _post(server, f"/v2/models/{MODEL}/generate_stream", {"input_ids": [1, 2], "max_tokens": 3})
    assert status == 503 and json.loads(body) == {"error": "Exceeds maximum queue size"}
    gate.open.set()
    waiter.join(60)
    assert queued["r"][0] == 200 and json.loads(queued["r"][1])["output_ids"] == solo.generate([[1, 2]], 3).tokens[0]
    for handle in holders:
        handle.wait(30)
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("GET", "/v2/health/ready")
    assert conn.getresponse().status == 200
    assert _post(server, f"/v2/models/{MODEL}/generate", {"input_ids": [5], "max_tokens": 2})[0] == 200


def test_prompt_longer_than_the_context_is_400(batched):
    server, scheduler, _ = batched
    status, body = _post(server, f"/v2/models/{MODEL}/generate", {"input_ids": [1] * 200, "max_tokens": 4})
    assert status == 400
    assert json.loads(body) == {"error": "a prompt of 200 tokens plus 4 new ones exceeds the model's 128 positions; "
                                         "shorten the prompt or ask for fewer tokens"}
    assert scheduler.stats() == IDLE


def _send_and_drop(server, path: str, payload: dict, read_first_event: bool) -> None:
    sock = socket.create_connection((server.host, server.port), timeout=30)
    body = json.dumps(payload).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    if read_first_event:
        received = b""
        while b"data: " not in received:
            received += sock.recv(4096)
    sock.close()


def test_a_streaming_client_that_disconnects_cancels_its_sequence(batched, gate):
    server, scheduler, _ = batched
    gate.open.clear()
    _send_and_drop(server, f"/v2/models/{MODEL}/generate_stream", {"input_ids": list(b"def "), "max_tokens": 100}, read_first_event=True)
    assert gate.held.wait(30)  # the sequence is in the batch, the loop held after a step
    request = scheduler.slots.requests[0]
    _until(lambda: request.cancelled)
    gate.open.set()
    assert request.wait(30)[1] == "cancelled" and len(request.tokens) < 100
    _wait_idle(scheduler)


def test_a_waiting_client_that_disconnects_cancels_its_request(batched, gate):
    server, scheduler, _ = batched
    holders = _fill_batch(scheduler, gate)
    _send_and_drop(server, f"/v2/models/{MODEL}/generate", {"input_ids": list(b"def "), "max_tokens": 50}, read_first_event=False)
    _until(lambda: scheduler.stats()["waiting"] == 1)
    request = scheduler._waiting[0]
    _until(lambda: request.cancelled)
    gate.open.set()
    assert request.wait(30)[1] == "cancelled" and request.tokens == []
    for handle in holders:
        handle.wait(30)
    _wait_idle(scheduler)


def test_metrics_has_the_scheduler_histograms(batched):
    server, scheduler, _ = batched
    assert _post(server, f"/v2/models/{MODEL}/generate", {"input_ids": [7, 8, 9], "max_tokens": 5})[0] == 200
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    for name in ("mlpdeploy_batch_occupancy", "mlpdeploy_queue_seconds", "mlpdeploy_time_to_first_token_seconds",
                 "mlpdeploy_inter_token_seconds", "mlpdeploy_decode_step_seconds"):
        count = next(line for line in text.splitlines() if line.startswith(f'{name}_count{{model="{MODEL}"}}'))
        assert float(count.split()[-1]) > 0, name
    assert f'mlpdeploy_generate_finished_total{{finish="length",model="{MODEL}"}}' in text


def _prompt_tokens(server) -> dict[str, float]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    return {cache: sum(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith("mlpdeploy_prompt_tokens_total{") and f'cache="{cache}"' in line and f'model="{MODEL}"' in line)
            for cache in ("prefilled", "reused")}


def test_a_shared_prompt_prefix_is_reused_and_counted(batched):
    """The second prompt starts with the first's 16 tokens: they are copied from the kept prefix, not
    prefilled again (/metrics counts them), and its answer is the runtime's solo answer."""
    server, scheduler, generator = batched
    first, second = list(range(40, 60)), list(range(40, 56)) + [91, 92, 93, 94]
    before = _prompt_tokens(server)
    for prompt in (first, second):
        status, body = _post(server, f"/v2/models/{MODEL}/generate", {"input_ids": prompt, "max_tokens": 4})
        assert status == 200 and json.loads(body)["output_ids"] == generator.generate([prompt], 4).tokens[0], body
    _until(lambda: sum(_prompt_tokens(server).values()) - sum(before.values()) == len(first) + len(second))  # counted as each request ends
    after = _prompt_tokens(server)
    assert after["reused"] - before["reused"] >= 16


def test_a_decoders_threads_stop_spinning_when_a_step_returns(batched):
    """Between steps the scheduler and the event loop need the cores: the decoder's session is made with
    session.force_spinning_stop (its threads spin within a step only)."""
    server, _, _ = batched
    options = server.models[MODEL].engine.session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
