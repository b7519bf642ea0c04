"""`make bench`: run every CPU benchmark in turn (GPU ones live in bench/gpu.sh), then render BENCHMARKS.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent

# One line per CPU benchmark: script and arguments.
BENCHMARKS = [
    ["roofline.py"],
    ["ort_vs_torch.py"],
    ["suite.py"],
    ["ort_opt_level.py"],
    ["gated_mlp_cpu.py"],
    ["kan_ops.py"],
    ["decode.py", "--int4", "--gated-sparsity", "0.4,0.5"],
    ["drop_layers.py"],
    ["serve_load.py", "--threads", "1"],
    ["sparse_mlp.py"],
    ["quant.py"],
    ["report.py"],  # bench/results/report.html from suite.json and decode.json
    ["benchmarks_md.py"],  # last: BENCHMARKS.md from every result file
]


def main() -> int:
    failed = []
    for script, *args in BENCHMARKS:
        path = HERE / script
        print(f"== {script} {' '.join(args)}", flush=True)
        if subprocess.call([sys.executable, str(path), *args]) != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
