"""The alternatives side by side: each zoo workload under torch eager, torch.compile, ONNX Runtime
on the plain export, ONNX Runtime after onnxscript's ORT fusions (`optimize_for_ort`), and
mlpdeploy (its default compile — pass `ort-fusions` at build, level `all` — and each pass that
applies), at batch 1 and 16, in one run.

    python bench/suite.py [--workloads opt-relu-small,vit-small,...] [--batches 1,16] [--rounds 20]
                          [--threads 2] [--no-torch-compile] [--json PATH] [--markdown PATH]

Every variant of a workload runs on the same random inputs, timed call by call round robin (a
shared machine's drift hits all alike); samples during which the process waited for a CPU are
set aside (bench/common.py Sampler). No ONNX Runtime session spin-waits (bench/common.py NO_SPINNING):
a spinning idle pool takes the CPUs from the next variant in the rotation. Each row gives its median ms and its ratio to the best
alternative (the fastest variant that is not mlpdeploy): above 1 means mlpdeploy is ahead.
Quality: mlpdeploy's compile validates every artifact on the model's task (eval split); the
column shows the candidate's metric and the torch model's. Peak MiB: what the variant adds to a
process's peak resident memory when loaded and run alone on the same inputs (bench/peak_memory.py,
a child process per variant; torch.compile has no column of its own: it is torch eager plus its
compile caches). At batch 1 the row also gives the
fraction of the machine's triad bandwidth its weight bytes reach (bench/roofline.py, same run).
Decoders with a KV cache are measured by bench/decode.py (ms/token against onnxruntime-genai).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, Sampler, artifact_session, cpu_session, machine, write_results  # noqa: E402
from peak_memory import peak_mib  # noqa: E402
from roofline import bandwidth_fraction, measure_roofline  # noqa: E402

from mlpdeploy.backends.onnxruntime import OrtOptions  # noqa: E402
from mlpdeploy.compile import CompileOptions, compile_model  # noqa: E402
from mlpdeploy.export import export_model  # noqa: E402
from mlpdeploy.model import generate_inputs, load_model  # noqa: E402
from mlpdeploy.passes.pipeline import parse_pass_spec  # noqa: E402
from mlpdeploy.runtime.engine import resolve_artifact  # noqa: E402
from mlpdeploy.runtime.latency import model_bytes  # noqa: E402

# workload -> mlpdeploy variants beyond the default compile: name -> CompileOptions keyword arguments
WORKLOADS: dict[str, dict[str, dict]] = {
    "llama-small": {"mlpdeploy fuse-gated-mlp": {"passes": ["fuse-gated-mlp"]}},
    "opt-relu-small": {},
    "vit-small": {},
    "mixer-small": {},
    "kat-tiny": {"mlpdeploy --ort-kernels": {"kernels": True}},
}


def onnxscript_fused(exported: Path) -> bytes:
    import onnx_ir as ir
    from onnxscript.rewriter import ort_fusions

    model = ir.load(exported)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ort_fusions.optimize_for_ort(model)
    return ir.to_proto(model).SerializeToString()


def compile_variant(name: str, out: Path, threads: int, passes=(), ort_kernels: bool = False) -> tuple[object, dict]:
    options = CompileOptions(passes=[parse_pass_spec(p) for p in passes],
                             build=OrtOptions(device="cpu", kernels=ort_kernels), task_limit=64)
    report = compile_model(name, out, options)
    if not report["passed"]:
        raise SystemExit(f"{name} {passes}: mlpdeploy's validation failed: {report['validation'].get('outputs')}")
    return artifact_session(out, threads), report["validation"].get("task") or {}


def build_variants(name: str, work: Path, threads: int, torch_compile: bool) -> tuple[dict, dict, dict, dict, dict]:
    """name -> callable(feed); name -> weight bytes; name -> task quality; notes; name -> (kind, target)
    for bench/peak_memory.py."""
    bundle = load_model(name)
    module = bundle.module.eval()
    order = [s.name for s in bundle.inputs]
    runs, sizes, quality, notes, targets = {}, {}, {}, {}, {}

    def torch_run(fn):
        return lambda feed: fn(*(torch.from_numpy(feed[n]) for n in order))

    runs["torch eager"] = torch_run(module)
    sizes["torch eager"] = sum(p.numel() * p.element_size() for p in module.parameters())
    targets["torch eager"] = ("torch", name)
    if torch_compile:
        try:
            compiled = torch.compile(module)
            with torch.no_grad():
                compiled(*(torch.from_numpy(v) for v in generate_inputs(bundle.inputs).values()))
            runs["torch.compile"], sizes["torch.compile"] = torch_run(compiled), sizes["torch eager"]
        except Exception as exc:  # noqa: BLE001 - a benchmark row that cannot run says why
            notes["torch.compile"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    exported = export_model(bundle, work / f"{name}.onnx").model_path
    fused = work / f"{name}.onnxscript-fused.onnx"
    fused.write_bytes(onnxscript_fused(exported))
    for label, model in (("ort plain export", exported), ("ort + onnxscript fusions", fused)):
        session = cpu_session(model, threads)
        runs[label] = lambda feed, s=session: s.run(None, feed)
        sizes[label], targets[label] = model_bytes(exported), ("onnx", model)
    for label, kwargs in {"mlpdeploy": {}, **WORKLOADS[name]}.items():
        out = work / label.replace(" ", "_")
        session, task = compile_variant(name, out, threads, **kwargs)
        runs[label] = lambda feed, s=session: s.run(None, feed)
        sizes[label], quality[label] = model_bytes(resolve_artifact(out)), task
        targets[label] = ("engine", out)
    return runs, sizes, quality, notes, targets


def peak_memory(targets: dict, feed: dict, work: Path, threads: int) -> dict:
    """label -> MiB the variant added at its peak (bench/peak_memory.py, one child process each)."""
    feed_path = work / "feed.npz"
    np.savez(feed_path, **feed)
    return {label: peak_mib(kind, target, feed_path, threads) for label, (kind, target) in targets.items()}


def time_variants(runs: dict, feed: dict, rounds: int) -> dict:
    samplers = {label: Sampler() for label in runs}
    with torch.no_grad():
        for run in runs.values():  # warm-up
            run(feed)
        for _ in range(rounds):
            for label, run in runs.items():
                samplers[label].call(run, feed)
    return {label: s.summary_ms() for label, s in samplers.items()}


def workload_arguments(doc: str) -> argparse.ArgumentParser:
    """A parser with the options every workload benchmark shares (which workloads, batches, rounds, threads)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main() -> None:
    parser = workload_arguments(__doc__)
    parser.add_argument("--no-torch-compile", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=str(RESULTS / "suite.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    roofline = measure_roofline(args.threads)
    results, rows = {}, []
    for name in args.workloads.split(","):
        with tempfile.TemporaryDirectory(dir=RESULTS if RESULTS.exists() else None) as tmp:
            runs, sizes, quality, notes, targets = build_variants(name, Path(tmp), args.threads, not args.no_torch_compile)
            bundle = load_model(name)
            per_batch, memory = {}, {}
            for batch in (int(b) for b in args.batches.split(",")):
                feed = generate_inputs(bundle.inputs, seed=batch, dims={"batch": batch})
                per_batch[batch] = time_variants(runs, feed, args.rounds)
                memory[batch] = peak_memory(targets, feed, Path(tmp), args.threads)
        results[name] = {"batches": per_batch, "bytes": sizes, "quality": quality, "notes": notes, "peak_mib": memory}
        for batch, timing in per_batch.items():
            alternatives = {k: v["p50_ms"] for k, v in timing.items() if not k.startswith("mlpdeploy")}
            best = min(alternatives, key=alternatives.get)
            for label, stat in timing.items():
                task = quality.get(label) or {}
                rows.append({
                    "workload": name, "batch": batch, "variant": label, "p50_ms": stat["p50_ms"], "p90_ms": stat["p90_ms"],
                    "clean": f"{stat['clean']}/{stat['samples']}", "best_alternative": best,
                    "vs_best": alternatives[best] / stat["p50_ms"], "mib": sizes[label] / 2**20,
                    "peak_mib": memory[batch].get(label),
                    "bandwidth": bandwidth_fraction(sizes[label], stat["p50_ms"], roofline) if batch == 1 else None,
                    "quality": f"{task['metric']} {task['candidate']:.4g} (torch {task['reference']:.4g})" if task else "",
                })
        for label, note in notes.items():
            print(f"note: {name}: {label}: {note}")
    table = markdown(rows, roofline, args.threads)
    print(table)
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(table + "\n")
    print(f"wrote {args.markdown} and {write_results('suite', {'roofline': roofline, 'threads': args.threads, 'rows': rows, 'results': results}, args.json)}")


def markdown(rows: list[dict], roofline: dict, threads: int) -> str:
    lines = [
        f"Machine: {machine()['cpu']}, {threads} threads; triad {roofline['triad_gb_s']:.1f} GB/s, fp32 matmul "
        f"{roofline['matmul_gflop_s']:.0f} GFLOP/s. ms = median over clean samples; × = best alternative's ms / this row's "
        "(> 1: ahead of it).",
        "",
        "| workload | batch | variant | p50 ms | p90 ms | × best alternative | MiB | peak MiB | batch-1 bandwidth | quality |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        bw = f"{r['bandwidth']:.0%}" if r["bandwidth"] is not None else ""
        ahead = f"{r['vs_best']:.2f}× vs {r['best_alternative']}" if r["variant"].startswith("mlpdeploy") else f"{r['vs_best']:.2f}×"
        peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "–"
        lines.append(f"| {r['workload']} | {r['batch']} | {r['variant']} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {ahead} | "
                     f"{r['mib']:.1f} | {peak} | {bw} | {r['quality']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
