"""In-flight batching without HTTP: closed-loop clients on the scheduler in this process.

    python bench/scheduler_load.py --decoder BUILT.onnx [--levels 1,8,16] [--max-tokens 48]
        [--requests-per-client 4] [--prefill auto|fused|separate] [--prefill-stall 1] [--threads 2] [--json PATH]

`bench/serve_load.py --mode batching` measures through `mlpdeploy serve` and HTTP, its client
threads on the same cores as the server. This runs the same chat prompts (each request its own,
"Request i. " before a `bench/prompts/open.jsonl` line) and the same closed loop straight on
`runtime.scheduler.Scheduler` (`submit`, `stream`): what the scheduler and the model do alone.
Reported per level: tokens/s (× one client), ITL p50 / p90 / p99 (ms), the decode step's p50 / p99
(ms, from the scheduler's observers) and rows per step; every greedy answer against its solo answer.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import batching_load as bl  # noqa: E402
from common import machine, write_results  # noqa: E402


class Steps:
    """A scheduler observer recording (rows, seconds) of every decode step."""

    def __init__(self):
        self.seen: list[tuple[int, float]] = []

    def step(self, rows, seconds):
        self.seen.append((rows, seconds))

    def finished(self, request):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decoder", type=Path, required=True, help="a built cached decoder (.onnx) or compile directory")
    parser.add_argument("--levels", default="1,8,16")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--prompts", type=Path, default=Path(__file__).parent / "prompts" / "open.jsonl")
    parser.add_argument("--prefill", choices=["auto", "fused", "separate"], default="auto")
    parser.add_argument("--prefill-stall", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from mlpdeploy.runtime.engine import IDLE_BETWEEN_RUNS, Engine
    from mlpdeploy.runtime.generate import CachedGenerator
    from mlpdeploy.runtime.scheduler import Scheduler, SchedulerOptions
    from mlpdeploy.serving.models import _tokenizer

    engine = Engine.load(args.decoder, threads=args.threads, session_entries=IDLE_BETWEEN_RUNS)  # as `serve` makes it
    tokenizer = _tokenizer(engine)
    stops = list(tokenizer.stop_token_ids)
    levels = [int(c) for c in args.levels.split(",")]
    per_client = {c: max(args.requests_per_client, -(-16 // c)) for c in levels}
    prompts, first = {}, 1
    for clients in levels:
        prompts[clients] = bl.chat_prompts(tokenizer, args.prompts, numbers=range(first, first + clients * per_client[clients]))
        first += clients * per_client[clients]
    generator = CachedGenerator(engine)
    expected = {tuple(p): generator.generate([p], args.max_tokens, stop_tokens=stops).tokens[0] for ps in prompts.values() for p in ps}
    scheduler = Scheduler(engine, SchedulerOptions(prefill=args.prefill, prefill_stall=args.prefill_stall))
    steps = Steps()
    scheduler.observers.append(steps)

    def send(prompt: list[int]) -> dict:
        sent = time.perf_counter()
        times, tokens = [], []
        for token in scheduler.submit(prompt, args.max_tokens, stop_tokens=stops).stream():
            times.append(time.perf_counter())
            tokens.append(token)
        return {"prompt": prompt, "tokens": tokens, "sent": sent, "times": times, "error": None}

    results = {}
    try:
        send(prompts[levels[0]][0])  # warm up
        for clients in levels:
            steps.seen.clear()
            got, seconds = bl.closed_loop(clients, per_client[clients], send, prompts[clients])
            level = bl.summarize(got, seconds, expected)
            itl = [(b - a) * 1e3 for r in got for a, b in zip(r["times"], r["times"][1:])]
            ms = np.array([s for _, s in steps.seen]) * 1e3
            level |= {"itl_p90_ms": round(float(np.percentile(itl, 90)), 1), "step_p50_ms": round(float(np.percentile(ms, 50)), 2),
                      "step_p99_ms": round(float(np.percentile(ms, 99)), 2), "rows_per_step": round(float(np.mean([r for r, _ in steps.seen])), 2)}
            results[clients] = level
            base = results[levels[0]]
            print(f"{clients:3d} clients: {level['tokens_per_s']:7.1f} tokens/s ({level['tokens_per_s'] / base['tokens_per_s']:.2f}x), "
                  f"ITL p50 {level['itl_p50_ms']} p90 {level['itl_p90_ms']} p99 {level['itl_p99_ms']} ms "
                  f"(p99 {level['itl_p99_ms'] / base['itl_p50_ms']:.2f}x the first level's p50), step p50 {level['step_p50_ms']} "
                  f"p99 {level['step_p99_ms']} ms, rows/step {level['rows_per_step']}, answers {level['identical']}/{level['requests']} = solo",
                  flush=True)
    finally:
        scheduler.close()
    data = {"decoder": str(args.decoder), "machine": machine(), "fused": scheduler.fused,
            "settings": {"threads": args.threads, "max_tokens": args.max_tokens, "requests_per_client": args.requests_per_client,
                         "prefill": args.prefill, "prefill_stall": args.prefill_stall, "prompts": str(args.prompts)},
            "levels": results}
    print(f"wrote {write_results('scheduler_load', data, args.json)}")
    return 0 if all(r["different"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
