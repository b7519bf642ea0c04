"""What a speculative verify pass costs: one session run over s tokens of one sequence against a one-token step.

    python bench/verify_cost.py --artifact DIR [--artifact DIR2 ...] [--past 128] [--widths 1,2,4,8,16] [--threads 2] [--json PATH]

Each artifact is a `compile --kv-cache` directory (onnxruntime backend). A prompt of --past tokens
is prefilled; then, round after round, s tokens are appended in one run and rewound (the cache's
length only), every width in turn (every other round reversed), artifacts alternating round by
round after a pause that lets the other's idle threads stop spinning. The ratios are what
`mlpdeploy.runtime.speculative.base.VERIFY_COST` (MatMulNBits builds) and `VERIFY_COST_NBITS_KERNELS`
(`--ort-kernels` builds, whose int4 and int8 linears run MatMulInt4 / MatMulInt8) hold, and what the adaptive draft length
weighs acceptance against.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import settle, write_results  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", action="append", required=True, type=Path)
    parser.add_argument("--past", type=int, default=128)
    parser.add_argument("--widths", default="1,2,4,8,16")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]

    from mlpdeploy.runtime.engine import Engine
    from mlpdeploy.runtime.step import Stepper

    rng = np.random.default_rng(0)
    prompt = rng.integers(100, 20_000, args.past).tolist()
    runs = {}
    for artifact in args.artifact:
        stepper = Stepper(Engine.load(artifact, threads=args.threads))
        _, state = stepper.prefill([prompt], args.past + max(widths) + 4)
        runs[str(artifact)] = (stepper, state)
    times: dict[str, dict[int, list[float]]] = {name: {w: [] for w in widths} for name in runs}
    for round_index in range(args.rounds):
        for name, (stepper, state) in runs.items():
            settle()
            for width in widths if round_index % 2 == 0 else widths[::-1]:
                ids = rng.integers(100, 20_000, (1, width))
                for repeat in range(args.repeats + 2):
                    start = time.perf_counter()
                    stepper.step(state, ids)
                    seconds = time.perf_counter() - start
                    stepper.rewind(state, [args.past])
                    if repeat >= 2:
                        times[name][width].append(seconds)
    results = {}
    for name, per in times.items():
        ms = {w: statistics.median(t) * 1e3 for w, t in per.items()}
        results[name] = {"ms": {str(w): round(v, 3) for w, v in ms.items()}, "vs_one": {str(w): round(v / ms[1], 3) for w, v in ms.items()}}
        print(f"{name}: s tokens at past {args.past}, {args.threads} threads: "
              + ", ".join(f"s={w} {v:.2f} ms ({v / ms[1]:.2f}×)" for w, v in ms.items()))
    if args.json:
        write_results("verify_cost", {"settings": {"past": args.past, "threads": args.threads, "rounds": args.rounds,
                                                   "repeats": args.repeats}, "results": results}, args.json)


if __name__ == "__main__":
    main()
