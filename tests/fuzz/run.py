"""`make fuzz`: a long differential-fuzzing run. Prints every case (its JSON spec), its result,
and at the end the counts and each failure with the spec that reproduces it.

    python -m tests.fuzz.run --cases 1000 [--seed S] [--family gated --family decoder]
    python -m tests.fuzz.run --replay '{"family": "gated", ...}'    # one case, from a printed spec
    python -m tests.fuzz.run --cases 1000 --max-combinations 16      # a time budget: ≤ 16 subsets a case

(from the repository root: the fuzzer is the package `tests.fuzz`).

Each case checks every subset of its passes (up to 2^7 = 128; the ORT fusions pass, last in
every chain, costs most), or with --max-combinations N: the export alone, each pass alone, the
whole chain and a seeded random draw of the other subsets, N in all.

Long runs can go in chunks with different seeds (`--seed`); `kill PID` (SIGTERM) or Ctrl-C stops
one with the summary of the cases that finished. Unlike the `make test` budget
(tests/fuzz/test_fuzz.py, which stops at the first failure and shrinks it), this run keeps going
past failures so one run lists them all. Exit 1 if any failed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

from .fuzz_families import FAMILIES, CaseSpec
from .fuzz_harness import CaseResult, cases, run_case


def _run_one(spec: CaseSpec, index: int, results: list[CaseResult], max_combinations: int | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="mlpdeploy-fuzz-") as tmp:
        try:
            result = run_case(spec, Path(tmp), max_combinations)
        except Exception as exc:  # noqa: BLE001 - the harness itself failing is a failure too
            result = CaseResult(spec, failures=[f"harness raised {type(exc).__name__}: {exc}"])
    results.append(result)
    status = "ok" if not result.failures else f"FAIL ({len(result.failures)})"
    print(f"case {index:5d} {status:9s} {result.combinations:3d}/{result.subsets:<3d} combos {result.checks:3d} checks {result.seconds:5.1f}s  {spec.to_json()}", flush=True)
    for failure in result.failures[:3]:
        print(f"           {failure}", flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed: the same seed generates the same cases")
    parser.add_argument("--family", action="append", choices=FAMILIES, help="only these families (repeatable)")
    parser.add_argument("--replay", help="run the one case with this JSON spec (as printed)")
    parser.add_argument("--max-combinations", type=int, default=None,
                        help="at most N pass subsets a case (each pass alone and the whole chain always among them); default: all")
    args = parser.parse_args(argv)
    results: list[CaseResult] = []
    start = time.perf_counter()
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` of a background run (which ignores SIGINT) ends it with the summary
    if args.replay:
        _run_one(CaseSpec.from_json(args.replay), 0, results)
    else:
        @seed(args.seed)
        @settings(max_examples=args.cases, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(spec=cases(tuple(args.family or FAMILIES)))
        def generate(spec):
            _run_one(spec, len(results), results, args.max_combinations)

        try:
            generate()
        except KeyboardInterrupt:  # Ctrl-C (or SIGTERM) ends the run early; the summary covers the cases that ran
            print("\ninterrupted", flush=True)
    failed = [r for r in results if r.failures]
    combos = sum(r.combinations for r in results)
    subsets = sum(r.subsets for r in results)
    checks = sum(r.checks for r in results)
    print(f"\n{len(results)} cases, {combos} pass combinations (of {subsets} subsets), {checks} checks, {len(failed)} failed cases, "
          f"{time.perf_counter() - start:.0f} s (seed {args.seed})")
    for r in failed:
        print(f"FAILED {r.spec.to_json()}")
        for failure in r.failures:
            print(f"    {failure}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
