"""The issue's done-means on a real model: plan on the user's text, compile the plan, compare.

    python bench/plan_real.py [--model .cache/real/smollm2-135m] [--data bench/data/mlpdeploy-notes.jsonl]
                              [--budget 1%] [--quant int4,nvfp4] [--plan PLAN.json] [--keep DIR] [--json PATH]

Runs, as a user would (the CLI, each in its own process):

    mlpdeploy analyze MODEL --data DATA --quant QUANT --redundancy --max-metric-delta BUDGET -o plan.json
    mlpdeploy compile MODEL --kv-cache --plan plan.json --data DATA -o out

and records each command's wall and CPU seconds and peak RSS (its own process tree, from wait4),
what the plan chose (quantized layers per format and accuracy level, bits per weight, dropped
sublayers, held-out checks), and compile's verdict with the plan's predicted held-out metric
(torch, at analyze) beside the one validation measured on the built ONNX model, on the same
held-out windows. `--plan` skips the analysis and compiles a plan already written.
On a shared machine the seconds are provisional (the load average is recorded); the metric
numbers do not depend on the machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MLPDEPLOY = Path(sys.executable).with_name("mlpdeploy")


def run(args: list[str], log: Path) -> dict:
    """Run one CLI command; its exit code, wall/CPU seconds and peak RSS (the largest of its processes)."""
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen([str(MLPDEPLOY), *args], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return {"command": "mlpdeploy " + " ".join(args), "exit_code": process.returncode, "seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def plan_summary(plan: dict) -> dict:
    """What the plan chose, from its plan.json."""
    predicted = plan.get("predicted", {})
    quant = plan.get("analyses", {}).get("quant", {}).get("plan", {})
    chosen = collections.Counter(quant.get("choices", {}).values())
    redundancy = plan.get("analyses", {}).get("redundancy", {}).get("planner", {})
    return {
        "budget": plan.get("budget"), "calibration": plan.get("calibration"),
        "passes": [p["name"] for p in plan.get("passes", [])],
        "predicted": {k: predicted.get(k) for k in ("metric", "reference", "value", "relative_delta", "heldout_samples", "spent_by")},
        "quantization": quant.get("summary"), "choices": dict(chosen.most_common()),
        "held_out_checks": [{k: p[k] for k in ("quantized_layers", "linear_weight_bytes", "predicted_growth", "value", "fits")}
                            for p in quant.get("probes", [])],
        "path_length": quant.get("path_length"),
        "dropped": redundancy.get("dropped"), "drop_candidates_tried": sum(1 for s in redundancy.get("steps", []) if s.get("tried")),
    }


def compile_summary(report: dict) -> dict:
    task = report.get("validation", {}).get("task") or {}
    check = report.get("plan", {}).get("check") or {}
    budget = (report.get("plan", {}).get("budget") or {}).get("max_delta")
    measured, reference = check.get("measured"), check.get("measured_reference")
    delta = (measured - reference) / reference if measured is not None and reference else None
    outputs = report.get("validation", {}).get("outputs", {})
    failed = [name for name, row in outputs.items() if not row.get("passed", True)]
    return {
        "passed": report.get("passed"), "task": task, "check": check,
        "outputs_checked": len(outputs), "outputs_failed": failed,
        "logits": {k: v for k, v in outputs.get("logits", {}).items() if not isinstance(v, (dict, list))},
        "tolerance": {k: report.get("validation", {}).get(k) for k in ("atol", "rtol")},
        "reference_edits": report.get("validation", {}).get("reference_edits"),
        "measured_relative_delta": delta, "within_budget": None if delta is None or budget is None else delta <= budget,
        "prediction_error": None if measured is None else (measured - check["predicted"]) / check["predicted"],
        "stage_seconds": {name: record.get("seconds") for name, record in report.get("stages", {}).items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / ".cache/real/smollm2-135m"))
    parser.add_argument("--data", default=str(ROOT / "bench/data/mlpdeploy-notes.jsonl"))
    parser.add_argument("--budget", default="1%")
    parser.add_argument("--quant", default="int4,nvfp4")
    parser.add_argument("--plan", help="compile this plan.json instead of analyzing")
    parser.add_argument("--keep", help="write plan.json and the artifact here (else a temporary directory, removed)")
    parser.add_argument("--json", help="output (default bench/results/plan_smollm2.json)")
    args = parser.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="plan_real_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": args.model, "data": args.data, "load_average_at_start": os.getloadavg()}
    try:
        plan_path = Path(args.plan) if args.plan else work / "plan.json"
        if not args.plan:
            results["analyze"] = run(["analyze", args.model, "--data", args.data, "--quant", args.quant, "--redundancy",
                                      "--max-metric-delta", args.budget, "-o", str(plan_path)], work / "analyze.log")
            print(json.dumps(results["analyze"]), flush=True)
            if results["analyze"]["exit_code"] != 0:
                raise SystemExit(f"analyze failed, see {work / 'analyze.log'}")
        results["plan"] = plan_summary(json.loads(plan_path.read_text()))
        print(json.dumps(results["plan"]["predicted"]), flush=True)
        out = work / "out"
        results["compile"] = run(["compile", args.model, "--kv-cache", "--plan", str(plan_path), "--data", args.data, "-o", str(out)],
                                 work / "compile.log")
        print(json.dumps(results["compile"]), flush=True)
        report = out / "report.json"
        if not report.exists():
            raise SystemExit(f"compile wrote no report, see {work / 'compile.log'}")
        results["compile"].update(compile_summary(json.loads(report.read_text())))
        results["load_average_at_end"] = os.getloadavg()
        path = write_results("plan_smollm2", results, args.json)
        print(json.dumps({k: results["compile"][k] for k in ("passed", "check", "measured_relative_delta", "within_budget")}, indent=1))
        print(f"wrote {path}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
