"""Bounded concurrent load on `mlpdeploy serve`: requests/s, p50/p99 latency, every answer checked.

    python bench/serve_load.py [--clients 8] [--seconds 30] [--quick] [--mode infer|generate|both]
                               [--model DIR] [--decoder DIR] [--threads N] [--json PATH]

The server runs as its own process (`mlpdeploy serve --port 0`, as a user starts it); the clients
are threads of this process, each with its own unmodified `tritonclient.http` client, sending
requests back to back for --seconds (--quick: 5 s).

* infer: a compiled zoo classifier (mixer-tiny, `compile_model`, or --model DIR), binary tensors,
  batches of 1-4 images; every answer is compared with the same inputs run in-process by
  `Engine` (rtol 1e-5).
* generate: a compiled cached decoder (llama-small --kv-cache, or --decoder DIR), POST /generate
  with 16 new tokens greedy from one of 8 prompts; every answer must equal the tokens the
  runtime's `CachedGenerator` gives in-process.

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
from common import write_results  # noqa: E402

from mlpdeploy.compile import CompileOptions, compile_model  # noqa: E402
from mlpdeploy.runtime.engine import Engine  # noqa: E402
from mlpdeploy.runtime.generate import CachedGenerator  # noqa: E402

PROMPTS = [b"def __init__(self", b"import os\n", b"for i in range(", b"class ", b"return ", b"if __name__ == ", b"    x = ", b"print("]


def start_server(models: list[Path], threads: int | None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-c", "from mlpdeploy.cli import main; main()", "serve", *map(str, models), "--port", "0", "--log-level", "warning"]
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
    barrier = threading.Barrier(clients + 1)

    def worker(k: int) -> None:
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

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
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
    parser.add_argument("--mode", choices=["infer", "generate", "both"], default="both")
    parser.add_argument("--model", type=Path, help="a compile directory of a classifier taking pixel_values (default: compile mixer-tiny)")
    parser.add_argument("--decoder", type=Path, help="a `compile --kv-cache` directory (default: compile llama-small --kv-cache)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads in the server (default: the build's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
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


def _compile(model: str, out: Path, kv_cache: bool) -> Path:
    print(f"compiling {model}{' --kv-cache' if kv_cache else ''} ...", flush=True)
    compile_model(model, out, CompileOptions(kv_cache=kv_cache, task_limit=8))
    return out


if __name__ == "__main__":
    sys.exit(main())
