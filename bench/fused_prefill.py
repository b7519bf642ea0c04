"""A prompt chunk inside the decode step against a step of its own: what fused prefill saves.

    python bench/fused_prefill.py --artifact BUILT.onnx [--rows 1,4,8,16] [--chunks 4,16] [--past 64]
        [--steps 30] [--rounds 3] [--threads 2] [--json PATH]

`--artifact` is an `--ort-kernels` build whose attention takes ragged steps (CachedAttention's
`token_rows`). For each r decoding rows (lengths `--past` + 0..6) and chunk of c prompt tokens
(a one-row prompt at `--past` tokens), timed as the scheduler runs them (`runtime.step.Stepper`,
the session made as `serve` makes it):

* decode: the r rows' one-token step alone;
* separate: that step, then the chunk as a step of its own on the prompt's one-row state
  (`--prefill separate`: two runs);
* fused: one ragged step of the chunk and the r rows' tokens (`--prefill fused`).

Reported per (r, c): each median ms, what the chunk adds to the rows' step each way, and fused ÷
separate. The variants take turns within every round, a pause before each round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, settle, write_results  # noqa: E402

SPREAD = 7  # rows hold past + 0..SPREAD-1 tokens: different lengths, as in serving
VARIANTS = ("decode", "separate", "fused")


def time_variant(stepper, variant: str, rows: int, chunk: int, past: int, steps: int) -> list[float]:
    """Seconds of each of `steps` iterations of `variant` (after 2 untimed ones), on fresh states."""
    room = past + SPREAD + (steps + 2) * (chunk + 1) + 4
    buffers = stepper.cache_buffers(rows + 1, room)
    lengths = np.concatenate([past + np.arange(rows) % SPREAD, [past]])
    fused = stepper.rows_state(buffers, lengths)  # rows 0..r-1 decode, row r takes the chunks
    decoding = stepper.rows_state({n: b[:rows] for n, b in buffers.items()}, lengths[:rows])
    prompt = stepper.rows_state({n: b[rows:] for n, b in buffers.items()}, lengths[rows:])
    ids, tokens = np.full((rows, 1), 100, np.int64), [100] * chunk
    times = []
    for index in range(steps + 2):
        start = time.perf_counter()
        if variant == "fused":
            stepper.step_segments(fused, [(rows, tokens)] + [(r, [100]) for r in range(rows)], rows + 1)
        else:
            stepper.step(decoding, ids)
            if variant == "separate":
                stepper.step(prompt, np.array([tokens]), last_only=True)
        if index >= 2:
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--rows", default="1,4,8,16")
    parser.add_argument("--chunks", default="4,16")
    parser.add_argument("--past", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from mlpdeploy.runtime.engine import IDLE_BETWEEN_RUNS, Engine
    from mlpdeploy.runtime.step import Stepper

    stepper = Stepper(Engine.load(args.artifact, threads=args.threads, session_entries=IDLE_BETWEEN_RUNS))
    if not stepper.ragged:
        raise SystemExit(f"{args.artifact} takes no ragged steps: build it with --ort-kernels (CachedAttention)")
    cases = [(int(r), int(c)) for r in args.rows.split(",") for c in args.chunks.split(",")]
    times = {(case, v): [] for case in cases for v in VARIANTS}
    for round_index in range(args.rounds):
        for rows, chunk in cases:
            settle()
            order = VARIANTS if round_index % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                times[(rows, chunk), variant] += time_variant(stepper, variant, rows, chunk, args.past, args.steps)
    print(f"{args.artifact}: r decoding rows (past {args.past}+) and a c-token prompt chunk, {args.threads} threads, "
          f"median of {args.rounds} × {args.steps} iterations, ms")
    print(f"{'r':>3} {'c':>3} {'decode':>8} {'separate':>9} {'fused':>8} {'chunk adds: separate':>21} {'fused':>6} {'fused / separate':>17}")
    results = []
    for rows, chunk in cases:
        ms = {v: 1e3 * statistics.median(times[(rows, chunk), v]) for v in VARIANTS}
        row = {"rows": rows, "chunk": chunk, **{f"{v}_ms": round(ms[v], 3) for v in VARIANTS},
               "chunk_adds_separate_ms": round(ms["separate"] - ms["decode"], 3), "chunk_adds_fused_ms": round(ms["fused"] - ms["decode"], 3),
               "fused_vs_separate": round(ms["fused"] / ms["separate"], 3)}
        results.append(row)
        print(f"{rows:>3} {chunk:>3} {ms['decode']:>8.2f} {ms['separate']:>9.2f} {ms['fused']:>8.2f} {row['chunk_adds_separate_ms']:>21.2f} "
              f"{row['chunk_adds_fused_ms']:>6.2f} {row['fused_vs_separate']:>16.2f}×")
    data = {"artifact": str(args.artifact), "past": args.past, "steps": args.steps, "rounds": args.rounds, "threads": args.threads,
            "machine": machine(), "results": results}
    print(f"wrote {write_results('fused_prefill', data, args.json)}")


if __name__ == "__main__":
    main()
