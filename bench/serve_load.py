"""Bounded concurrent load on `mlpdeploy serve`: requests/s, p50/p99 latency, every answer checked.

    python bench/serve_load.py [--clients 8] [--seconds 30] [--quick] [--mode infer|generate|both]
                               [--model DIR] [--decoder DIR] [--threads N] [--json PATH]
    python bench/serve_load.py --mode batching --decoder DIR [--levels 1,2,4,8,16] [--max-tokens 48] [--requests-per-client 4] [--rounds 1]
                               [--prompts bench/prompts/open.jsonl] [--long-prompt 1000] [--stall-clients 4]
                               [--prefill auto|fused|separate] [--prefill-stall 1.5] [--prefill-min-chunk 16] [--prefix-cache-mb 128] [--repeat-prompts] [--genai GENAI_DIR] [--threads 2] [--json PATH]

The server runs as its own process (`mlpdeploy serve --port 0`, as a user starts it); the clients
are threads of this process, each with its own unmodified `tritonclient.http` client, sending
requests back to back for --seconds (--quick: 5 s).

* infer: a compiled zoo classifier (mixer-tiny, `compile_model`, or --model DIR), binary tensors,
  batches of 1-4 images; every answer is compared with the same inputs run in-process by
  `Engine` (rtol 1e-5).
* generate: a compiled cached decoder (llama-small --kv-cache, or --decoder DIR), POST /generate
  with 16 new tokens greedy from one of 8 prompts; every answer must equal the tokens the
  runtime's `CachedGenerator` gives in-process.

* batching: in-flight batching (`bench/batching_load.py`): at each level C closed-loop clients
  stream chat answers (`generate_stream`, --max-tokens each, --requests-per-client back to back,
  16 requests a level at least; every request its own prompt,
  "Request i. " before a --prompts line, so only the chat template is shared between requests, as
  between users — the server's prefix cache, --prefix-cache-mb, reuses that); tokens/s, TTFT p50/p99, ITL p50/p99,
  mean rows per decode step (from /metrics), every answer against its solo answer (the runtime's
  batch-1 loop, in-process, before the server starts); then a --long-prompt-token prompt arrives
  while --stall-clients others decode (their inter-token gaps during its prefill against before);
  then, with --genai, onnxruntime-genai's `Engine` on its own build at the same levels, in-process.

Latency is client-side wall time per request. The machine is shared: numbers are indicative.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import timed_threads, write_results  # noqa: E402

from mlpdeploy.compile import CompileOptions, compile_model  # noqa: E402
from mlpdeploy.runtime.engine import Engine  # noqa: E402
from mlpdeploy.runtime.generate import CachedGenerator  # noqa: E402
from mlpdeploy.runtime.scheduler.options import SchedulerOptions  # noqa: E402

# tokens each client decoding beside the long prompt streams: enough to outlast its prefill in small
# chunks (SmolLM2 int4, `--prefill-stall 1 --prefill-min-chunk 2`: 4.6 s of ~12 ms steps, ~380)
STALL_TOKENS = 640
PROMPTS = [b"def __init__(self", b"import os\n", b"for i in range(", b"class ", b"return ", b"if __name__ == ", b"    x = ", b"print("]


def start_server(models: list[Path], threads: int | None, extra: list[str] = ()) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-c", "from mlpdeploy.cli import main; main()", "serve", *map(str, models), "--port", "0", "--log-level", "warning", *extra]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        found = re.search(r"serving on http://([\d.]+:\d+)/v2", line)
        if found:
            return proc, found.group(1)
    raise SystemExit(f"the server did not start (exit {proc.wait()})")


def infer_work(url: str, engine: Engine, name: str):
    """(setup per client, one request → correct?) for the classifier."""
    import tritonclient.http as th

    rng = np.random.default_rng(0)
    feeds = [rng.standard_normal((1 + i % 4, 3, 32, 32)).astype(np.float32) for i in range(16)]
    expected = [engine(pixel_values=x)["logits"] for x in feeds]

    def client():
        c = th.InferenceServerClient(url)

        def one(i: int) -> bool:
            x = feeds[i % len(feeds)]
            tensor = th.InferInput("pixel_values", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=True)
            got = c.infer(name, [tensor]).as_numpy("logits")
            return got.shape == expected[i % len(feeds)].shape and np.allclose(got, expected[i % len(feeds)], rtol=1e-5, atol=1e-6)

        return one, c.close

    return client


def generate_work(url: str, engine: Engine, name: str, new_tokens: int = 16):
    generator = CachedGenerator(engine)
    expected = [generator.generate([list(p)], new_tokens).tokens[0] for p in PROMPTS]
    host, port = url.rsplit(":", 1)

    def client():
        conn = http.client.HTTPConnection(host, int(port), timeout=60)

        def one(i: int) -> bool:
            body = json.dumps({"input_ids": list(PROMPTS[i % len(PROMPTS)]), "parameters": {"max_tokens": new_tokens}})
            conn.request("POST", f"/v2/models/{name}/generate", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            return response.status == 200 and answer["output_ids"] == expected[i % len(PROMPTS)]

        return one, conn.close

    return client


def run_load(make_client, clients: int, seconds: float) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    wrong = [0] * clients
    errors: list[str] = []

    def worker(k: int, barrier: threading.Barrier) -> None:
        one, close = make_client()
        one(k)  # warm the connection
        barrier.wait()
        deadline, i = time.perf_counter() + seconds, k
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                ok = one(i)
                latencies[k].append(time.perf_counter() - start)
                wrong[k] += not ok
                i += clients
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            close()

    elapsed = timed_threads(clients, worker)
    flat = np.array([x for lat in latencies for x in lat]) * 1e3
    return {
        "clients": clients, "seconds": round(elapsed, 2), "requests": int(flat.size),
        "requests_per_s": round(flat.size / elapsed, 1),
        "p50_ms": round(float(np.percentile(flat, 50)), 2), "p99_ms": round(float(np.percentile(flat, 99)), 2),
        "max_ms": round(float(flat.max()), 2), "wrong": int(sum(wrong)), "errors": errors,
        "all_correct": not errors and sum(wrong) == 0 and flat.size > 0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="5 s per mode")
    parser.add_argument("--mode", choices=["infer", "generate", "both", "batching"], default="both")
    parser.add_argument("--levels", default="1,2,4,8,16", help="batching: client counts")
    parser.add_argument("--max-tokens", type=int, default=48, help="batching: new tokens per request")
    parser.add_argument("--rounds", type=int, default=1,
                        help="batching: run the levels in turn this many times (new prompts each round); each level's figures pool its rounds")
    parser.add_argument("--requests-per-client", type=int, default=4,
                        help="batching: requests each client sends back to back (a level sends 16 at least); the first and last "
                             "weigh less the more there are (every client starts at once; the last ones finish alone)")
    parser.add_argument("--prompts", type=Path, default=Path(__file__).parent / "prompts" / "open.jsonl", help="batching: chat prompts")
    parser.add_argument("--long-prompt", type=int, default=1000, help="batching: tokens of the prompt arriving mid-stream (0: skip)")
    parser.add_argument("--stall-clients", type=int, default=4, help="batching: clients decoding when the long prompt arrives")
    parser.add_argument("--genai", type=Path, help="batching: an onnxruntime-genai build of the same model, run by its Engine")
    serve = SchedulerOptions()  # the server's defaults (serve's options of the same names)
    parser.add_argument("--max-batch-size", type=int, default=serve.max_batch, help="batching: the server's --max-batch-size")
    parser.add_argument("--prefill", choices=["auto", "fused", "separate"], default=serve.prefill, help="batching: the server's --prefill")
    parser.add_argument("--prefill-stall", type=float, default=serve.prefill_stall, help="batching: the server's --prefill-stall")
    parser.add_argument("--prefill-min-chunk", type=int, default=serve.smallest_chunk, help="batching: the server's --prefill-min-chunk")
    parser.add_argument("--prefix-cache-mb", type=int, default=serve.prefix_cache_mb, help="batching: the server's --prefix-cache-mb (0: off)")
    parser.add_argument("--repeat-prompts", action="store_true",
                        help="batching: cycle the --prompts lines as they are (default: each request a distinct 'Request i. ...' prompt)")
    parser.add_argument("--model", type=Path, help="a compile directory of a classifier taking pixel_values (default: compile mixer-tiny)")
    parser.add_argument("--decoder", type=Path, help="a `compile --kv-cache` directory (default: compile llama-small --kv-cache)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads in the server (default: the build's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.mode == "batching":
        return batching(args)
    seconds = 5.0 if args.quick else args.seconds
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    models = {}
    if args.mode in ("infer", "both"):
        models["infer"] = args.model or _compile("mixer-tiny", work / "mixer-tiny", kv_cache=False)
    if args.mode in ("generate", "both"):
        models["generate"] = args.decoder or _compile("llama-small", work / "llama-small", kv_cache=True)
    proc, url = start_server(list(models.values()), args.threads)
    results = {}
    try:
        for mode, path in models.items():
            engine, name = Engine.load(path), path.name
            make = infer_work(url, engine, name) if mode == "infer" else generate_work(url, engine, name)
            results[mode] = {"model": name, **run_load(make, args.clients, seconds)}
            r = results[mode]
            print(f"{mode:8s} {name}: {r['clients']} clients x {r['seconds']} s: {r['requests']} requests, {r['requests_per_s']} req/s, "
                  f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, wrong {r['wrong']}, errors {len(r['errors'])}", flush=True)
    finally:
        proc.terminate()
        shutdown = proc.wait(timeout=60)
    out = write_results("serve_load", {"results": results, "server_exit": shutdown, "threads": args.threads}, args.json)
    print(f"results: {out}")
    return 0 if all(r["all_correct"] for r in results.values()) and shutdown == 0 else 1


def batching(args) -> int:
    """--mode batching (module docstring)."""
    import os
    import platform

    import batching_load as bl


    if args.decoder is None:
        raise SystemExit("--mode batching needs --decoder DIR (a `compile --kv-cache` directory of a model with a chat template)")
    levels = [int(c) for c in args.levels.split(",")]

    def per_client(clients: int) -> int:  # 16 requests a level at least; each client args.requests_per_client or more
        return max(args.requests_per_client, -(-16 // clients))

    engine = Engine.load(args.decoder, threads=args.threads)
    generator = CachedGenerator(engine)
    from mlpdeploy.serving.models import _tokenizer
    from mlpdeploy.serving.package import model_name

    tokenizer = _tokenizer(engine)
    prompts = bl.chat_prompts(tokenizer, args.prompts)
    level_prompts, first = {}, 1
    for round_ in range(args.rounds):  # every request its own prompt unless --repeat-prompts (a repeated prompt reuses its whole prefix)
        for clients in levels:
            count = clients * per_client(clients)
            level_prompts[round_, clients] = prompts if args.repeat_prompts else bl.chat_prompts(tokenizer, args.prompts, numbers=range(first, first + count))
            first += count
    stops = list(tokenizer.stop_token_ids)
    distinct = {tuple(p): p for ps in [prompts, *level_prompts.values()] for p in ps}
    print(f"solo answers for {len(distinct)} prompts ({args.max_tokens} tokens, in-process) ...", flush=True)
    expected = {key: generator.generate([p], args.max_tokens, stop_tokens=stops).tokens[0] for key, p in distinct.items()}
    text = Path(__file__).parent / "data" / "mlpdeploy-notes.jsonl"
    long = bl.long_prompt(tokenizer, text, args.long_prompt) if args.long_prompt else None
    # the clients decoding while it arrives continue later text (no chat turn to end, no prefix shared with it)
    stall_prompts = [bl.long_prompt(tokenizer, text, 64, skip=args.long_prompt + 64 * k) for k in range(args.stall_clients)] if long else []
    long_solo = generator.generate([long], 4, stop_tokens=stops) if long else None
    del generator, engine
    load_before = os.getloadavg()
    proc, url = start_server([args.decoder], args.threads, ["--max-batch-size", str(args.max_batch_size), "--prefill", args.prefill,
                                                            "--prefill-stall", str(args.prefill_stall),
                                                            "--prefill-min-chunk", str(args.prefill_min_chunk),
                                                            "--prefix-cache-mb", str(args.prefix_cache_mb)])
    host, port = url.rsplit(":", 1)
    port = int(port)
    name = model_name(args.decoder)  # the server's name for it: a directory's name, a file's stem
    results: dict = {"levels": {}, "load": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_before": load_before},
                     "settings": {"threads": args.threads, "max_tokens": args.max_tokens, "requests_per_client": args.requests_per_client, "rounds": args.rounds, "prompts": str(args.prompts),
                                  "prompt_tokens": [len(p) for p in prompts], "repeat_prompts": args.repeat_prompts, "max_batch_size": args.max_batch_size,
                                  "prefill": args.prefill, "prefill_stall": args.prefill_stall, "prefill_min_chunk": args.prefill_min_chunk,
                                  "prefix_cache_mb": args.prefix_cache_mb}}

    try:
        bl.stream_request(host, port, name, prompts[0], 4)  # warm up
        runs = {clients: {"got": [], "seconds": 0.0, "steps": 0.0, "rows": 0.0, "rounds": []} for clients in levels}
        for round_ in range(args.rounds):  # the levels in turn, every round: a slow spell of the machine falls on every level
            for clients in levels:
                steps, rows = bl.occupancy(host, port)
                got, seconds = bl.closed_loop(clients, per_client(clients), lambda p: bl.stream_request(host, port, name, p, args.max_tokens),
                                              level_prompts[round_, clients])
                steps_after, rows_after = bl.occupancy(host, port)
                run = runs[clients]
                run["got"] += got
                run["seconds"] += seconds
                run["steps"] += steps_after - steps
                run["rows"] += rows_after - rows
                run["rounds"].append(round(sum(len(g["tokens"]) for g in got) / seconds, 1))
                if args.rounds > 1:
                    print(f"round {round_ + 1}: {clients:3d} clients {run['rounds'][-1]:7.1f} tokens/s", flush=True)
        for clients in levels:
            run = runs[clients]
            r = results["levels"][clients] = {**bl.summarize(run["got"], run["seconds"], expected), "tokens_per_s_by_round": run["rounds"],
                                              "mean_rows_per_step": round(run["rows"] / max(run["steps"], 1), 2)}
            base = results["levels"][levels[0]]["tokens_per_s"]
            print(f"{clients:3d} clients: {r['tokens_per_s']:7.1f} tokens/s ({r['tokens_per_s'] / base:.2f}x), TTFT p50 {r['ttft_p50_ms']} p99 "
                  f"{r['ttft_p99_ms']} ms, ITL p50 {r['itl_p50_ms']} p99 {r['itl_p99_ms']} ms, rows/step {r['mean_rows_per_step']}, "
                  f"answers {r['identical']}/{r['requests']} = solo, errors {len(r['errors'])}", flush=True)
        prefilled, reused = bl.prompt_tokens(host, port)
        results["prompt_tokens"] = {"prefilled": prefilled, "reused": reused}
        print(f"prompt tokens over every level: {prefilled:.0f} prefilled, {reused:.0f} reused from kept prefixes", flush=True)
        if long:
            s = results["stall"] = bl.stall(host, port, name, stall_prompts, long, args.stall_clients, STALL_TOKENS)
            s["long_answer_is_solo"] = s.pop("long_tokens") == long_solo.tokens[0]
            print(f"long prompt ({len(long)} tokens) with {args.stall_clients} decoding: TTFT {s['long_ttft_ms']} ms; others' ITL p50 before "
                  f"{s['others_itl_p50_before_ms']} ms, during its prefill p50 {s['others_itl_p50_during_ms']} p90 {s['others_itl_p90_during_ms']} "
                  f"worst {s['others_max_itl_during_ms']} ms "
                  f"(+{s['delay_in_steps']} steps); its answer = solo: {s['long_answer_is_solo']}; "
                  f"the others decoded throughout: {s['others_outlasted_prefill']}", flush=True)
    finally:
        proc.terminate()
        results["server_exit"] = proc.wait(timeout=60)
    results["load"]["load_after"] = os.getloadavg()
    if 1 in results["levels"]:
        one = results["levels"][1]
        results["targets"] = {f"tokens_per_s_{c}_vs_1": round(results["levels"][c]["tokens_per_s"] / one["tokens_per_s"], 2)
                              for c in levels if c != 1}
        if 8 in results["levels"]:
            results["targets"]["itl_p99_8_vs_itl_p50_1"] = round(results["levels"][8]["itl_p99_ms"] / one["itl_p50_ms"], 2)
        print(f"targets: {results['targets']}", flush=True)
    if args.genai:
        print("onnxruntime-genai Engine (static batching on CPU) ...", flush=True)
        g = results["genai"] = bl.genai_levels(args.genai, prompts, levels, per_client, args.max_tokens, args.threads or 2)
        for clients, r in g["levels"].items():
            print(f"genai {clients:3d} clients: {r['tokens_per_s']:7.1f} tokens/s, TTFT p50 {r['ttft_p50_ms']} p99 {r['ttft_p99_ms']} ms, "
                  f"ITL p50 {r['itl_p50_ms']} p99 {r['itl_p99_ms']} ms, answers {r['identical']}/{r['requests']} = its solo", flush=True)
        g["solo_answers_equal_mlpdeploy_solo"] = sum(answer == expected[tuple(p)][:len(answer)] for p, answer in zip(prompts, g.pop("solo")))
    out = write_results("serve_load_batching", results, args.json)
    print(f"results: {out}")
    ok = all(not r["errors"] and r["different"] == 0 for r in results["levels"].values())
    return 0 if ok and results["server_exit"] == 0 else 1


def _compile(model: str, out: Path, kv_cache: bool) -> Path:
    print(f"compiling {model}{' --kv-cache' if kv_cache else ''} ...", flush=True)
    compile_model(model, out, CompileOptions(kv_cache=kv_cache, task_limit=8))
    return out


if __name__ == "__main__":
    sys.exit(main())
