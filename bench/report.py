"""bench/results/report.html from the latest suite and decode results (run last by `make bench`).

    python bench/report.py [--suite PATH] [--decode PATH] [-o PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine  # noqa: E402

from mlpdeploy.atomic import write_text  # noqa: E402
from mlpdeploy.report_bench import render_bench_html  # noqa: E402


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=RESULTS / "suite.json")
    parser.add_argument("--decode", type=Path, default=RESULTS / "decode.json")
    parser.add_argument("-o", "--output", type=Path, default=RESULTS / "report.html")
    args = parser.parse_args(argv)
    suite, decode = _load(args.suite), _load(args.decode)
    if suite is None and decode is None:
        print(f"no results at {args.suite} or {args.decode}: run bench/suite.py and bench/decode.py first")
        return 2
    write_text(args.output, render_bench_html(suite, decode, (suite or decode).get("machine") or machine()))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
