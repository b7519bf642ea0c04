"""BENCHMARKS.md from the committed result files (run last by `make bench`; `make docs` runs it too).

    python bench/benchmarks_md.py [--results bench/results] [-o BENCHMARKS.md] [--check]

Renders every JSON file under --results (bench/results/*.json, bench/results/gpu/*.json) with
mlpdeploy.benchmarks_md. --check writes nothing and exits 1 when the file differs from what
the results render to.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlpdeploy.atomic import write_text
from mlpdeploy.benchmarks_md import load_results, render_benchmarks

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is stale; write nothing")
    args = parser.parse_args(argv)
    results = load_results(args.results) if args.results.is_dir() else {}
    try:
        source = args.results.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        source = str(args.results)
    text = render_benchmarks(results, source)
    if args.check:
        stale = not args.output.exists() or args.output.read_text() != text
        print(f"{args.output} is {'stale: run `make docs`' if stale else 'up to date'} ({len(results)} result files)")
        return 1 if stale else 0
    write_text(args.output, text)
    print(f"wrote {args.output} from {len(results)} result files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
