"""Compile at scale: wall time and peak resident memory of `compile`, in all and per stage.

    python bench/compile_memory.py [--case smollm2|llama-1b ...] [--json PATH] [--source DIR] [--llama-dir DIR]

Cases (each a `compile` of its own in a child process, outputs in a temporary directory that
is deleted afterwards):

    smollm2    .cache/real/smollm2-135m --kv-cache               bound: 3x the weight bytes
    llama-1b   a TinyLlama-shaped 1.1 B LLaMA with random weights (22 layers, d 2048, MLP 5632,
               32/4 heads, vocab 32,000; 4.4 GB, built with `mlpdeploy.zoo.random_llama` in a
               temporary directory deleted afterwards, or kept in --llama-dir DIR and reused),
               --kv-cache --pass quantize-weights:format=int4
                                                                bound: 16 GB

The child's peak resident memory is the kernel's (os.wait4: the whole process and anything it
waited for); each stage's is measured in the child around the stage by mlpdeploy/memory.py's
watcher (this checkout's, loaded by path), so it works for any version of mlpdeploy:
`--source DIR` runs the mlpdeploy source tree at DIR instead of the installed one (e.g.
`git archive main | tar -x -C /tmp/main` for a before/after). mlpdeploy's own report adds the
steps inside each stage (report.json `stages`).

Run it alone (flock /tmp/mlpdeploy-heavy.lock ...): the 1.1 B compile needs ~10 GB and the
machine's memory is shared; timings on a loaded machine are provisional.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ROOT = HERE.parent
CASES = {
    "smollm2": {"model": str(ROOT / ".cache" / "real" / "smollm2-135m"), "kv_cache": True, "passes": [], "bound": ("weights", 3.0)},
    "llama-1b": {"model": None, "kv_cache": True, "passes": ["quantize-weights:format=int4"], "bound": ("bytes", 16e9)},
}


def _memory_module():
    """This checkout's mlpdeploy/memory.py (it imports nothing from mlpdeploy), loaded by path so
    the child measures the same way whichever mlpdeploy `--source` runs."""
    spec = importlib.util.spec_from_file_location("compile_memory_tracker", ROOT / "mlpdeploy" / "memory.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def child(model: str, out: str, kv_cache: bool, passes: list[str]) -> None:
    """Compile in this process; print one JSON line: per-stage seconds and peak RSS."""
    from mlpdeploy.compile import CompileOptions, compile_model
    from mlpdeploy.passes.pipeline import parse_pass_spec

    tracker, open_stages = _memory_module().MemoryTracker(), {}

    def on_stage(name: str, event: str, seconds: float | None) -> None:
        if event == "start":
            open_stages[name] = contextlib.ExitStack()
            open_stages[name].enter_context(tracker.stage(name))
        else:
            open_stages.pop(name).close()

    options = CompileOptions(kv_cache=kv_cache, passes=[parse_pass_spec(p) for p in passes])
    report = compile_model(model, out, options, on_stage=on_stage)
    stages = {name: {"seconds": round(r.seconds, 2), "peak_rss_mib": round(r.peak_mib, 1)} for name, r in tracker.stages.items()}
    print(json.dumps({"stages": stages, "passed": report["passed"], "parameters": report["parameters"]}))


def run_case(name: str, case: dict, source: Path | None, keep: Path | None) -> dict:
    """One compile in a child process: its wall time, the kernel's peak RSS for it, its stages."""
    out = Path(tempfile.mkdtemp(prefix=f"compile-memory-{name}-")) / "out"
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = f"{source}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        case["model"],
        str(out),
        json.dumps({"kv_cache": case["kv_cache"], "passes": case["passes"]}),
    ]
    logs = out.parent / "child.log"
    with open(logs.with_suffix(".out"), "w") as stdout, open(logs, "w") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # the kernel's peak RSS of this child (and what it waited for)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = logs.with_suffix(".out").read_text(), logs.read_text()
    result: dict = {
        "model": case["model"],
        "args": (["--kv-cache"] if case["kv_cache"] else []) + [a for p in case["passes"] for a in ("--pass", p)],
        "source": str(source) if source else "installed",
        "wall_s": round(wall, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "returncode": proc.returncode,
    }
    if proc.returncode != 0:
        result["error"] = (stderr.strip().splitlines() or ["?"])[-1]
    else:
        result.update(json.loads(stdout.strip().splitlines()[-1]))
        report = json.loads((out / "report.json").read_text())
        result["report_stages"] = report["stages"]
        result["report_memory"] = report.get("memory")
    weights = _weight_bytes(Path(case["model"]))
    result["weights_mib"] = round(weights / 2**20, 1)
    result["peak_over_weights"] = round(result["peak_rss_mib"] * 2**20 / weights, 2)
    kind, value = case["bound"]
    bound = value * weights if kind == "weights" else value
    result["bound_mib"] = round(bound / 2**20, 1)
    result["within_bound"] = result["peak_rss_mib"] * 2**20 <= bound
    if keep is not None:
        shutil.copytree(out, keep / name, dirs_exist_ok=True)
    shutil.rmtree(out.parent, ignore_errors=True)
    return result


def _weight_bytes(model: Path) -> int:
    """Bytes of the model's safetensors weights (the fp32 parameters)."""
    return sum(f.stat().st_size for f in model.glob("*.safetensors"))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        model, out, settings = argv[1], argv[2], json.loads(argv[3])
        child(model, out, settings["kv_cache"], settings["passes"])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", choices=list(CASES), help="default: every case")
    parser.add_argument("--source", type=Path, help="run the mlpdeploy source tree at DIR (its repository root)")
    parser.add_argument("--json", type=Path, help="default: bench/results/compile_memory.json")
    parser.add_argument("--keep", type=Path, help="copy each compile's output directory here")
    parser.add_argument(
        "--llama-dir", type=Path, help="build (or reuse) the random 1.1 B LLaMA here and keep it (default: a temporary directory)"
    )
    args = parser.parse_args(argv)
    from common import write_results

    results = {}
    for name in args.case or list(CASES):
        with contextlib.ExitStack() as cleanup:
            case = CASES[name]
            if name == "llama-1b":
                from mlpdeploy.zoo.random_llama import build

                if args.llama_dir is None:
                    tmp = tempfile.mkdtemp(prefix="llama-1.1b-random-")
                    cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)
                case = dict(case, model=str(build(args.llama_dir or Path(tmp) / "model")))
            results[name] = run_case(name, case, args.source, args.keep)
        r = results[name]
        print(
            f"{name}: {r['wall_s']:.0f} s, peak {r['peak_rss_mib']:,.0f} MiB = {r['peak_over_weights']:.2f}x the "
            f"{r['weights_mib']:,.0f} MiB of weights (bound {r['bound_mib']:,.0f} MiB: {'ok' if r['within_bound'] else 'OVER'}), "
            f"validation {'passed' if r.get('passed') else 'failed' if 'passed' in r else r.get('error')}"
        )
        for stage, info in r.get("stages", {}).items():
            print(f"    {stage:10s} {info['seconds']:8.1f} s  {info['peak_rss_mib']:9,.0f} MiB")
    load = os.getloadavg()
    path = write_results(
        "compile_memory",
        {
            "cases": results,
            "load_average": [round(x, 2) for x in load],
            "memory_total_mib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20),
        },
        args.json,
    )
    print(f"wrote {path} (load average {load[0]:.1f}: timings on a loaded machine are provisional)")
    return 0 if all(r["within_bound"] and r["returncode"] in (0,) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
