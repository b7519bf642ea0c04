"""Real models: mlpdeploy's weight quantization against ONNX Runtime's own quantizer, judged on held-out text.

    python bench/quant_real.py [--models minilm,smollm2] [--data bench/data/mlpdeploy-notes.jsonl]
                               [--task-samples 0] [--plan PLAN.json] [--json PATH] [--update] [--only NAMES]

Each model is exported once by mlpdeploy (fp32 ONNX, no KV cache) and every variant is a rewrite of
that same graph, run in ONNX Runtime on the held-out windows `--data` defines (docs/data.md):

* `onnxruntime RTN int4 L0` — `MatMulNBitsQuantizer(block_size=32, is_symmetric=True,
  accuracy_level=0)` (RTN, what the issue compared against), and the same at level 4;
* `mlpdeploy int4 L0/L4` — `quantize-weights:format=int4,accuracy_level=0|4` (block 32);
* `mlpdeploy nvfp4 L0`, `mlpdeploy mxfp4 L0` — FP4 weights (block 16 / 32) in 8-bit MatMulNBits
  (the E2M1 codes are exact there), float activations;
* SmolLM2 also: `mlpdeploy int4 L0/L4 (LM head float)` (the layers ONNX Runtime's quantizer
  quantizes: it leaves the tied LM head, a transposed embedding, in float), `mlpdeploy int8 L4`, and the plan of `--plan` (a plan.json
  from `mlpdeploy analyze` for this model) when given.

Metric: all-MiniLM-L6-v2 — the mean cosine of the mean-pooled output against torch fp32's (the
data task's metric); SmolLM2-135M — perplexity, and next-token top-1 agreement with the fp32
graph. Bytes: the ONNX file (weights included; both tools leave the token embedding in float32).
Accuracy numbers do not depend on the machine; only the timing columns do.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_session, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"minilm": ROOT / ".cache/real/minilm", "smollm2": ROOT / ".cache/real/smollm2-135m"}
INT4 = {"format": "int4", "block": "32"}


def ours(options: dict):
    def make(source: Path, out: Path) -> Path:
        from mlpdeploy.passes import PassSpec, rewrite_model

        return rewrite_model(source, out, [PassSpec("quantize-weights", {k: str(v) for k, v in options.items()})]).model_path

    return make


def onnxruntime_rtn(level: int):
    def make(source: Path, out: Path) -> Path:
        import onnx
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantizer = MatMulNBitsQuantizer(str(source), block_size=32, is_symmetric=True, accuracy_level=level)
        quantizer.process()
        onnx.save(quantizer.model.model, str(out))
        return out

    return make


def planned(plan: Path):
    def make(source: Path, out: Path) -> Path:
        from mlpdeploy.analyze.plan import passes_with_plan
        from mlpdeploy.passes import rewrite_model

        return rewrite_model(source, out, passes_with_plan(plan, [], source)).model_path

    return make


def variants(model: str, plan: Path | None) -> dict:
    found = {
        "fp32": None,
        "onnxruntime RTN int4 L0": onnxruntime_rtn(0),
        "mlpdeploy int4 L0": ours({**INT4, "accuracy_level": 0}),
        "onnxruntime RTN int4 L4": onnxruntime_rtn(4),
        "mlpdeploy int4 L4": ours({**INT4, "accuracy_level": 4}),
        "mlpdeploy nvfp4 L0": ours({"format": "nvfp4", "accuracy_level": 0, "fp4_form": "nbits8"}),
        "mlpdeploy mxfp4 L0": ours({"format": "mxfp4", "accuracy_level": 0, "fp4_form": "nbits8"}),
    }
    if model == "smollm2":
        # ONNX Runtime's quantizer leaves the tied LM head (a transposed embedding, no MatMul
        # initializer) in float; mlpdeploy quantizes it by default. These rows quantize the same layers.
        found["mlpdeploy int4 L0 (LM head float)"] = ours({**INT4, "accuracy_level": 0, "exclude": "*lm_head"})
        found["mlpdeploy int4 L4 (LM head float)"] = ours({**INT4, "accuracy_level": 4, "exclude": "*lm_head"})
        found["mlpdeploy int8 L4"] = ours({"format": "int8", "accuracy_level": 4})
        if plan is not None:
            found[f"mlpdeploy plan ({plan.name})"] = planned(plan)
    return found


def evaluate(task, path: Path, names: list[str], samples: int | None, threads: int) -> dict:
    session = cpu_session(path, threads)

    def run(feed):
        return session.run(None, {k: feed[k] for k in names})[0]

    batch = max(1, 1024 // task.seq_len) if getattr(task, "seq_len", None) else 16
    start = time.perf_counter()
    result = task.evaluate(run, batch_size=batch, limit=samples)
    return {**result, "seconds": time.perf_counter() - start}


def bench_model(model: str, data: Path, samples: int | None, plan: Path | None, threads: int, work: Path, only: set[str] | None = None) -> dict:
    from mlpdeploy.export import export_model
    from mlpdeploy.model import load_model
    from mlpdeploy.model.tasks import DataOptions, attach_task

    spec = str(MODELS[model])
    if model == "smollm2" and plan is not None:
        spec = json.loads(plan.read_text())["model"]  # a plan names its model as analyze was given it
    bundle = attach_task(load_model(spec), DataOptions(path=data))
    names = [s.name for s in bundle.inputs]
    source = export_model(bundle, work / f"{model}.onnx").model_path
    rows, fp32_predictions = {}, None
    for name, make in variants(model, plan).items():
        if only and make is not None and name not in only:
            continue
        out = work / f"{model}.{name.replace(' ', '_').replace('(', '').replace(')', '')}.onnx"
        path = source if make is None else make(source, out)
        result = evaluate(bundle.task, path, names, samples, threads)
        row = {"metric": result["metric"], "value": result["value"], "samples": result["samples"],
               "bytes": path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(path.name + ".data")),
               "eval_seconds": round(result["seconds"], 1)}
        if fp32_predictions is None:
            fp32_predictions = result["predictions"]
        elif result["metric"] == "perplexity":
            row["top1_agreement_with_fp32"] = float(np.mean(result["predictions"] == fp32_predictions))
        rows[name] = row
        print(f"  {model:8s} {name:32s} {row['metric']} {row['value']:.5f}  {row['bytes'] / 2**20:7.1f} MiB"
              + (f"  top-1 {row['top1_agreement_with_fp32']:.4f}" if "top1_agreement_with_fp32" in row else ""), flush=True)
        if path != source:
            for file in (path, *path.parent.glob(path.name + ".data")):
                file.unlink()
    return {"task": bundle.task.describe() if hasattr(bundle.task, "describe") else {}, "variants": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="minilm,smollm2")
    parser.add_argument("--data", type=Path, default=ROOT / "bench/data/mlpdeploy-notes.jsonl")
    parser.add_argument("--task-samples", type=int, default=0, help="held-out samples (0: all the data holds)")
    parser.add_argument("--plan", type=Path, help="a plan.json for SmolLM2 to add as a variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--update", action="store_true", help="keep the other rows of the existing --json file")
    parser.add_argument("--only", help="comma-separated variant names to run (fp32 always runs: the top-1 baseline)")
    args = parser.parse_args()
    results = {"data": str(args.data), "task_samples": args.task_samples, "models": {}}
    existing = args.json or ROOT / "bench/results/quant_real.json"
    if args.update and existing.exists():
        results["models"] = json.loads(existing.read_text())["models"]
    with tempfile.TemporaryDirectory(prefix="quant_real.") as tmp:
        for model in args.models.split(","):
            found = bench_model(model, args.data, args.task_samples or None, args.plan, args.threads, Path(tmp),
                                set(args.only.split(",")) if args.only else None)
            if args.update and model in results["models"]:
                found["variants"] = {**results["models"][model]["variants"], **found["variants"]}
            results["models"][model] = found
    for model in args.models.split(","):
        found = results["models"][model]
        rows = found["variants"]
        theirs, mine = rows.get("onnxruntime RTN int4 L0"), rows.get("mlpdeploy int4 L0 (LM head float)", rows.get("mlpdeploy int4 L0"))
        if theirs and mine:
            better = mine["value"] >= theirs["value"] if mine["metric"] != "perplexity" else mine["value"] <= theirs["value"]
            print(f"{model}: int4 L0 {mine['metric']} mlpdeploy {mine['value']:.5f} vs ONNX Runtime's quantizer {theirs['value']:.5f} "
                  f"({'at least as accurate' if better else 'LESS ACCURATE'})")
    print("wrote", write_results("quant_real", results, args.json))


if __name__ == "__main__":
    main()
