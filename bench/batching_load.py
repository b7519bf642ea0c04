"""In-flight batching under load (`serve_load.py --mode batching`): streaming clients at several
concurrency levels, a long prompt arriving mid-stream, and onnxruntime-genai's `Engine` beside it.

Each level runs C closed-loop clients (each sends its next request when the last one ended) of
`generate_stream` requests for chat prompts (the model's chat template, sent as `input_ids`), and
records per request the time to its first token (TTFT, from sending it) and the gaps between its
tokens (inter-token latency, ITL); tokens/s is every generated token over the level's wall time.
Every answer is compared with the solo answer the runtime's batch-1 loop gives in-process before
the server starts.
"""

from __future__ import annotations

import http.client
import json
import threading
import time

import numpy as np
from common import timed_threads


def chat_prompts(tokenizer, path, limit: int | None = None, numbers: range | None = None) -> list[list[int]]:
    """Token ids of each `{"prompt": ...}` line of `path`, formatted as one user turn; with `numbers`,
    one distinct prompt per number i: "Request i. " and line i-1 (cycling), so that no two requests
    send the same prompt (only the chat template and system prompt are shared, as between users)."""
    lines = [json.loads(line)["prompt"] for line in open(path) if line.strip()][:limit]
    if numbers is not None:
        lines = [f"Request {i}. {lines[(i - 1) % len(lines)]}" for i in numbers]
    return [tokenizer.encode_chat([{"role": "user", "content": p}]) for p in lines]


def long_prompt(tokenizer, data_path, tokens: int, skip: int = 0) -> list[int]:
    """`tokens` ids of held-out English text: the documents of `data_path` in order, the first `skip` ids left out."""
    ids: list[int] = []
    for line in open(data_path):
        ids += tokenizer.encode(json.loads(line)["text"])
        if len(ids) >= skip + tokens:
            return ids[skip:skip + tokens]
    raise SystemExit(f"{data_path} has fewer than {skip + tokens} tokens")


def stream_request(host: str, port: int, model: str, prompt: list[int], max_tokens: int) -> dict:
    """One generate_stream request: its tokens, send time and the arrival time of each token."""
    conn = http.client.HTTPConnection(host, port, timeout=600)
    body = json.dumps({"input_ids": prompt, "parameters": {"max_tokens": max_tokens}})
    sent = time.perf_counter()
    conn.request("POST", f"/v2/models/{model}/generate_stream", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    tokens, times, error = [], [], None
    if response.status != 200:
        error = f"HTTP {response.status}: {response.read()[:200]!r}"
    else:
        while True:
            line = response.readline()
            if not line:
                break
            if not line.startswith(b"data: "):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                error = event["error"]
                break
            if event["output_ids"]:
                times.append(time.perf_counter())
                tokens += event["output_ids"]
            if "finish_reason" in event:
                break
    conn.close()
    return {"prompt": prompt, "tokens": tokens, "sent": sent, "times": times, "error": error}


def closed_loop(clients: int, per_client: int, send, prompts: list[list[int]]) -> tuple[list[dict], float]:
    """`clients` threads each sending `per_client` requests back to back; (results, wall seconds)."""
    results: list[list[dict]] = [[] for _ in range(clients)]

    def client(k: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        for i in range(per_client):
            prompt = prompts[(k * per_client + i) % len(prompts)]
            results[k].append(send(prompt))

    seconds = timed_threads(clients, client)
    return [r for rs in results for r in rs], seconds


def summarize(results: list[dict], seconds: float, expected: dict[tuple, list[int]]) -> dict:
    """tokens/s, TTFT and ITL percentiles (ms), and how many answers equal their solo answers."""
    ttft = [(r["times"][0] - r["sent"]) * 1e3 for r in results if r["times"]]
    itl = [(b - a) * 1e3 for r in results for a, b in zip(r["times"], r["times"][1:])]
    tokens = sum(len(r["tokens"]) for r in results)
    wrong = [i for i, r in enumerate(results) if r["error"] is None and r["tokens"] != expected[tuple(r["prompt"])]]

    def pct(values, q):
        return round(float(np.percentile(values, q)), 1) if values else None

    return {"requests": len(results), "tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
            "ttft_p50_ms": pct(ttft, 50), "ttft_p99_ms": pct(ttft, 99), "itl_p50_ms": pct(itl, 50), "itl_p99_ms": pct(itl, 99),
            "errors": [r["error"] for r in results if r["error"]], "identical": len(results) - len(wrong), "different": len(wrong)}


def stall(host: str, port: int, model: str, prompts: list[list[int]], long: list[int], others: int, max_tokens: int) -> dict:
    """`others` clients stream long answers (`prompts[k]`: text they continue, so that they outlast the
    long prefill); once they are all decoding, a long prompt arrives. Their inter-token gaps while it
    is prefilled, against their gaps before it arrived; `others_outlasted_prefill` says whether every
    one of them was still decoding when its first token came (if not, the late gaps are missing)."""
    results: list[dict] = [None] * others  # type: ignore[list-item]
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, stream_request(host, port, model, prompts[k % len(prompts)], max_tokens)))
               for k in range(others)]
    for t in threads:
        t.start()
    deadline = time.perf_counter() + 60
    steps, rows = occupancy(host, port)
    while time.perf_counter() < deadline:  # wait until every other client decodes (the last steps all had `others` rows)
        time.sleep(0.3)
        steps_now, rows_now = occupancy(host, port)
        if steps_now - steps >= 3 and (rows_now - rows) == others * (steps_now - steps):
            break
        steps, rows = steps_now, rows_now
    arrival = stream_request(host, port, model, long, 4)
    for t in threads:
        t.join()
    start, first = arrival["sent"], arrival["times"][0] if arrival["times"] else None
    before, during = [], []
    for r in results:
        for a, b in zip(r["times"], r["times"][1:]):
            if b <= start:
                before.append(b - a)
            elif first is not None and a < first:  # a gap overlapping the long prefill
                during.append(b - a)
    step = float(np.median(before)) if before else None
    worst = max(during) if during else None
    return {"others": others, "long_prompt_tokens": len(long), "long_ttft_ms": round((first - start) * 1e3, 1) if first else None,
            "others_itl_p50_before_ms": round(step * 1e3, 1) if step else None,
            "others_max_itl_during_ms": round(worst * 1e3, 1) if worst else None,
            "others_itl_p50_during_ms": round(float(np.median(during)) * 1e3, 1) if during else None,
            "others_itl_p90_during_ms": round(float(np.percentile(during, 90)) * 1e3, 1) if during else None,
            "others_gaps_during": len(during),
            "delay_in_steps": round((worst - step) / step, 2) if step and worst else None,
            "others_outlasted_prefill": first is not None and all(r["times"] and r["times"][-1] > first for r in results),
            "long_tokens": arrival["tokens"], "errors": [r["error"] for r in results + [arrival] if r["error"]]}


def _metric(host: str, port: int, name: str, label: str = "") -> float:
    """The sum of the server's samples named `name` (with `label`, e.g. 'cache="reused"', in their labels)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name) and label in line)


def prompt_tokens(host: str, port: int) -> tuple[float, float]:
    """The server's prompt tokens so far: (prefilled, reused from kept prefixes)."""
    name = "mlpdeploy_prompt_tokens_total{"
    return _metric(host, port, name, 'cache="prefilled"'), _metric(host, port, name, 'cache="reused"')


def occupancy(host: str, port: int) -> tuple[float, float]:
    """(decode steps so far, sum of their rows)."""
    return _metric(host, port, "mlpdeploy_batch_occupancy_count"), _metric(host, port, "mlpdeploy_batch_occupancy_sum")


def genai_levels(model_dir, prompts: list[list[int]], levels: list[int], per_client, max_tokens: int, threads: int) -> dict:
    """onnxruntime-genai's `Engine` on its own build of the model, the same prompts and closed-loop
    clients: each client's next request begins when its last one ends. On CPU the Engine batches
    statically (continuous batching needs its PagedAttention build, CUDA only): requests that begin
    while a batch runs wait for it to end."""
    import shutil
    import tempfile

    import onnxruntime_genai as og

    work = tempfile.mkdtemp(prefix="genai-engine-")
    for item in model_dir.iterdir():
        (shutil.copy2 if item.is_file() else shutil.copytree)(item, f"{work}/{item.name}")
    config = json.loads(open(f"{work}/genai_config.json").read())
    config.setdefault("engine", {})["static_batching"] = {"max_batch_size": max(levels)}
    config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    open(f"{work}/genai_config.json", "w").write(json.dumps(config, indent=2))
    model = og.Model(work)
    solo = {tuple(p): _genai_run(og, model, [[p]], max_tokens)[0][0]["tokens"] for p in prompts}
    out = {}
    for clients in levels:
        queues = [[prompts[(k * per_client(clients) + i) % len(prompts)] for i in range(per_client(clients))] for k in range(clients)]
        results, seconds = _genai_run(og, model, queues, max_tokens)
        out[clients] = summarize(results, seconds, solo)
    shutil.rmtree(work, ignore_errors=True)
    return {"levels": out, "solo": [solo[tuple(p)] for p in prompts]}


def _genai_run(og, model, queues: list[list[list[int]]], max_tokens: int) -> tuple[list[dict], float]:
    """Closed-loop clients (`queues[k]`: client k's prompts in order) on one Engine; (results, seconds)."""
    engine = og.Engine(model)
    buffer = engine.create_event_buffer(1024)
    active: dict[int, tuple[int, object, object, dict]] = {}
    results: list[dict] = []
    position = [0] * len(queues)

    def begin(k: int) -> None:
        prompt = queues[k][position[k]]
        position[k] += 1
        request = engine.create_request()
        options = og.TurnOptions(request)
        options.set_max_generated_tokens(max_tokens)
        options.set_do_sample(False)
        record = {"prompt": prompt, "tokens": [], "sent": time.perf_counter(), "times": [], "error": None}
        request.begin_turn(np.asarray(prompt, np.int32), options)
        active[id(request)] = (k, request, options, record)

    start = time.perf_counter()
    for k in range(len(queues)):
        begin(k)
    while active:
        for event in engine.run(buffer):
            key = next((i for i, (_, r, _, _) in active.items() if r is event.request), None)
            if key is None:
                continue
            k, request, _, record = active[key]
            if event.flags & og.EngineEventFlags.FAILED:
                record["error"] = str(event.error_code)
            if event.flags & og.EngineEventFlags.TOKEN and event.token is not None:
                record["times"].append(time.perf_counter())
                record["tokens"].append(int(event.token))
            if event.flags & (og.EngineEventFlags.TURN_FINISHED | og.EngineEventFlags.FAILED):
                request.close()
                del active[key]
                results.append(record)
                if position[k] < len(queues[k]):
                    begin(k)
    return results, time.perf_counter() - start
