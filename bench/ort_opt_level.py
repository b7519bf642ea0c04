"""ONNX Runtime graph optimization level "extended" vs "all" for mlpdeploy's `onnxruntime` build, with
and without its build-time ORT fusions, on the suite's workloads at batch 1 and 16, in one run.

    python bench/ort_opt_level.py [--workloads llama-small,...] [--batches 1,16] [--rounds 20] [--threads 2] [--json PATH]

Each workload is exported once and built four times (fusions on/off × level extended/all) by the
`onnxruntime` backend as `mlpdeploy build` does; the four engines run the same random inputs,
timed call by call round robin (bench/common.py Sampler), no session spin-waiting (NO_SPINNING). Printed per workload and batch: each
variant's median ms and "all" ÷ "extended" (below 1: "all" is faster). This is the measurement
behind `--opt-level`'s default.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, artifact_session, machine, write_results  # noqa: E402
from suite import time_variants, workload_arguments  # noqa: E402

from mlpdeploy.backends import get_backend  # noqa: E402
from mlpdeploy.backends.onnxruntime import OrtOptions  # noqa: E402
from mlpdeploy.export import export_model  # noqa: E402
from mlpdeploy.model import generate_inputs, load_model  # noqa: E402

LEVELS = ("extended", "all")


def build_engines(name: str, work: Path, threads: int) -> dict:
    exported = export_model(load_model(name), work / f"{name}.onnx").model_path
    backend, engines = get_backend("onnxruntime"), {}
    for fusions in (True, False):
        for level in LEVELS:
            label = f"{level}{'' if fusions else ' no-fusions'}"
            out = work / f"{label.replace(' ', '_')}.ort.onnx"
            backend.build(exported, out, OrtOptions(device="cpu", opt_level=level, fusions=fusions))
            session = artifact_session(out, threads)
            engines[label] = lambda feed, s=session: s.run(None, feed)
    return engines


def main() -> None:
    parser = workload_arguments(__doc__)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    results = {}
    print(f"{machine()['cpu']}, {args.threads} threads; ms = median over clean samples")
    print(f"{'workload':16} {'batch':>5} " + " ".join(f"{v:>20}" for v in ("extended", "all", "all/ext",
                                                                         "ext no-fusions", "all no-fusions", "all/ext")))
    for name in args.workloads.split(","):
        bundle = load_model(name)
        with tempfile.TemporaryDirectory(dir=RESULTS if RESULTS.exists() else None) as tmp:
            runs = build_engines(name, Path(tmp), args.threads)
            for batch in (int(b) for b in args.batches.split(",")):
                feed = generate_inputs(bundle.inputs, seed=batch, dims={"batch": batch})
                timing = time_variants(runs, feed, args.rounds)
                results.setdefault(name, {})[batch] = timing
                ms = {k: v["p50_ms"] for k, v in timing.items()}
                cells = [ms["extended"], ms["all"], ms["all"] / ms["extended"],
                         ms["extended no-fusions"], ms["all no-fusions"], ms["all no-fusions"] / ms["extended no-fusions"]]
                print(f"{name:16} {batch:>5} " + " ".join(f"{c:>20.3f}" for c in cells), flush=True)
    print(f"wrote {write_results('ort_opt_level', {'threads': args.threads, 'results': results}, args.json)}")


if __name__ == "__main__":
    main()
