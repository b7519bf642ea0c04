"""Low-bit weights: int4 decode vs onnxruntime-genai, llama-small perplexity per format, FP4 forms on ONNX Runtime.

    python bench/quant.py [--parts forms,ppl,decode] [--contexts 16,128,512] [--new-tokens 32] [--rounds 4] [--threads 2]
                          [--plan auto|none|plan.json] [--task-samples 0] [--json PATH]

decode — the anchor-shaped decoder with its KV cache (bench/anchor.py), interleaved round by
  round as bench/decode.py does: mlpdeploy fp32 and int4 (`compile --kv-cache` with
  quantize-weights format=int4 block 32 accuracy_level 4, then the ort-decoder fusions), the two
  FP4 forms for ONNX Runtime (nvfp4 as the exact 8-bit MatMulNBits re-encoding at level 4, and as
  the W4A16MatMul standard-op function), and onnxruntime-genai's fp32 and int4 builds (its
  model builder, `-e cpu`: MatMulNBits block 32, accuracy level 4). Decode ms/token at each
  context, prefill at 128; the op types of our int4 graph and genai's, side by side.
ppl — llama-small perplexity on its eval split, each variant's rewritten graph run in ONNX
  Runtime (not torch): fp32; every linear int4 at accuracy level 0 and 4; nvfp4 and mxfp4 (exact
  weights: the function form, float32 activations, and the 8-bit re-encoding at level 4); and
  the plan of `mlpdeploy analyze llama-small --quant nvfp4,mxfp4,int4 --max-metric-delta 1%`
  (made here unless `--plan` gives one).
  Linear-weight bytes as stored, effective bits per weight, and size vs float32.
forms — one [1024, 2816] linear at batch 1 per ONNX Runtime weight form (MatMulNBits 4-bit and
  8-bit at accuracy levels 0 and 4, the W4A16MatMul function), interleaved: the FP4 form choice.
Timings on a shared machine are indicative; ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from anchor import anchor_dir  # noqa: E402
from common import RESULTS, machine, write_results  # noqa: E402
from decode import GenaiDecoder, MlpdeployDecoder, measure  # noqa: E402

INT4 = {"format": "int4", "block": "32", "accuracy_level": "4"}
DECODE_VARIANTS = {  # name -> quantize-weights options (None: fp32)
    "mlpdeploy fp32": None,
    "mlpdeploy int4": INT4,
    "mlpdeploy nvfp4 nbits8": {"format": "nvfp4", "accuracy_level": "4", "fp4_form": "nbits8"},
    "mlpdeploy nvfp4 function": {"format": "nvfp4", "accuracy_level": "0", "fp4_form": "function"},
}
PPL_VARIANTS = {
    "fp32": None,
    "int4 level 0": {"format": "int4", "accuracy_level": "0"},
    "int4 level 4": {"format": "int4", "accuracy_level": "4"},
    "nvfp4 (function, fp32 activations)": {"format": "nvfp4", "accuracy_level": "0", "fp4_form": "function"},
    "nvfp4 (8-bit MatMulNBits, level 4)": {"format": "nvfp4", "accuracy_level": "4", "fp4_form": "nbits8"},
    "mxfp4 (function, fp32 activations)": {"format": "mxfp4", "accuracy_level": "0", "fp4_form": "function"},
    "mxfp4 (8-bit MatMulNBits, level 4)": {"format": "mxfp4", "accuracy_level": "4", "fp4_form": "nbits8"},
}


def op_types(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = collections.Counter(f"{n.domain + '::' if n.domain not in ('', 'ai.onnx') else ''}{n.op_type}" for n in model.graph.node)
    return dict(sorted(counts.items()))


def build_decoders(hf: Path, work: Path, threads: int, fp4: bool) -> tuple[dict, dict, dict]:
    from mlpdeploy.backends.onnxruntime import OrtOptions
    from mlpdeploy.compile import CompileOptions, compile_model
    from mlpdeploy.passes.pipeline import PassSpec

    variants, graphs, notes = {}, {}, {}
    for name, options in DECODE_VARIANTS.items():
        if "fp4" in name and not fp4:
            continue
        out = work / name.replace(" ", "-")
        passes = [PassSpec("quantize-weights", dict(options))] if options else []
        report = compile_model(str(hf), out, CompileOptions(kv_cache=True, passes=passes, build=OrtOptions(device="cpu")))
        if not report["passed"]:
            raise SystemExit(f"{name}: validation failed: {report['validation']['outputs']}")
        variants[name] = MlpdeployDecoder(out, threads)
        graphs[name] = Path(report["artifacts"]["build_model"])
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        notes["genai"] = "onnxruntime-genai is not installed (pip install 'mlpdeploy[bench]')"
        return variants, graphs, notes
    for precision in ("fp32", "int4"):
        out = work / f"genai-{precision}"
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", precision,
                        "-e", "cpu", "-c", str(work / "genai-cache")], check=True, capture_output=True)
        variants[f"genai {precision}"] = GenaiDecoder(out, threads)
        graphs[f"genai {precision}"] = out / "model.onnx"
    return variants, graphs, notes


def decode_part(args) -> dict:
    hf = anchor_dir(16)
    contexts = [int(c) for c in args.contexts.split(",")]
    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        variants, graphs, notes = build_decoders(hf, Path(tmp), args.threads, not args.no_fp4)
        ops = {name: op_types(path) for name, path in graphs.items() if path.exists()}
        sizes = {name: sum(f.stat().st_size for f in {path, path.parent / f"{path.name}.data"} if f.exists())
                 for name, path in graphs.items() if path.exists()}
        results = {f"context {c}": measure(variants, c, args.new_tokens, args.rounds, 512, seed=c) for c in contexts}
        results["prefill 128"] = measure(variants, 128, 2, args.rounds * 2, 512, seed=7)
    print(f"\nanchor decoder (hidden 1024, MLP 2816, 4 layers, 16 heads, vocab 512) with KV cache, batch 1, {args.threads} threads; "
          "ms, median over clean samples [clean/all]")
    print(f"{'variant':28s}" + "".join(f"{k:>24s}" for k in results) + f"{'model MB':>10s}")
    for name in variants:
        cells = []
        for key, per in results.items():
            stat = per[name]["prefill" if key.startswith("prefill") else "decode"]
            cells.append(f"{stat['p50_ms']:9.3f} [{stat['clean']}/{stat['samples']}]")
        print(f"{name:28s}" + "".join(f"{c:>24s}" for c in cells) + f"{sizes.get(name, 0) / 1e6:10.1f}")
    if "genai int4" in variants:
        for key, per in results.items():
            what = "prefill" if key.startswith("prefill") else "decode"
            ratio = per["mlpdeploy int4"][what]["p50_ms"] / per["genai int4"][what]["p50_ms"]
            print(f"{key}: mlpdeploy int4 / genai int4 = {ratio:.3f} (target <= 1.0)")
    names = sorted({op for counts in ops.values() for op in counts})
    shown = [n for n in ("mlpdeploy int4", "genai int4", "mlpdeploy nvfp4 nbits8") if n in ops]
    print("\nop types per graph: " + " | ".join(shown))
    for op in names:
        print(f"  {op:40s}" + "".join(f"{ops[n].get(op, 0):>8d}" for n in shown))
    return {"results": results, "op_types": ops, "model_bytes": sizes, "notes": notes}


def planned(args) -> dict:
    """plan.json of `mlpdeploy analyze llama-small --quant nvfp4,mxfp4,int4 --max-metric-delta 1%`."""
    from mlpdeploy.analyze import AnalyzeOptions, analyze_model

    print("planning: analyze llama-small --quant nvfp4,mxfp4,int4 --max-metric-delta 1% ...", flush=True)
    plan = analyze_model("llama-small", AnalyzeOptions({"quant": "nvfp4,mxfp4,int4"}, max_metric_delta=0.01, relative_budget=True))
    return plan.to_json()


def ppl_part(args) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    from mlpdeploy.export.torch_export import export_model
    from mlpdeploy.model.source import load_model
    from mlpdeploy.passes.pipeline import PassSpec
    from mlpdeploy.passes.rewrite import rewrite_model

    bundle = load_model("llama-small")
    linears = {p: m.weight.numel() for p, m in bundle.module.named_modules() if isinstance(m, torch.nn.Linear)}
    weights, fp32_bytes = sum(linears.values()), 4 * sum(linears.values())
    variants = dict(PPL_VARIANTS)
    if args.plan != "none":
        plan = json.loads(Path(args.plan).read_text()) if args.plan != "auto" else planned(args)
        entry = next(p for p in plan["passes"] if p["name"] == "quantize-weights")
        variants["planned mix"] = PassSpec("quantize-weights", dict(entry.get("options", {})), sites=entry["sites"])
    rows = {}
    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        exported = export_model(bundle, Path(tmp) / "model.onnx")
        names = [s.name for s in bundle.inputs]
        for name, options in variants.items():
            spec = options if isinstance(options, PassSpec) else PassSpec("quantize-weights", dict(options)) if options else None
            path = exported.model_path
            stored, quantized = fp32_bytes, 0
            if spec is not None:
                rewritten = rewrite_model(path, Path(tmp) / f"{len(rows)}.onnx", [spec])
                report = rewritten.passes[0]
                stored = fp32_bytes - report["float32_bytes"] + report["bytes"]
                quantized, path = report["weights"], rewritten.model_path
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            run = lambda inputs, s=session: s.run(None, {k: np.asarray(v) for k, v in inputs.items() if k in names})[0]  # noqa: E731
            result = bundle.task.evaluate(run, limit=args.task_samples or None)
            rows[name] = {"perplexity": result["value"], "samples": result["samples"], "linear_weight_bytes": stored,
                          "bits_per_weight": 8 * stored / weights, "smaller": fp32_bytes / stored, "quantized_weights": quantized}
            print(f"  {name}: perplexity {result['value']:.4f}", flush=True)
    base = rows["fp32"]["perplexity"]
    print(f"\nllama-small, {rows['fp32']['samples']} eval samples, graphs run in ONNX Runtime CPU; {weights:,} linear weights "
          f"({fp32_bytes:,} B float32)")
    print(f"{'variant':38s}{'perplexity':>11s}{'Δ%':>8s}{'linear bytes':>14s}{'bits/w':>8s}{'smaller':>9s}")
    for name, row in rows.items():
        row["relative_delta"] = row["perplexity"] / base - 1
        print(f"{name:38s}{row['perplexity']:11.4f}{100 * row['relative_delta']:+8.2f}{row['linear_weight_bytes']:14,d}"
              f"{row['bits_per_weight']:8.2f}{row['smaller']:8.2f}x")
    if "planned mix" in rows:
        mix = rows["planned mix"]
        print(f"target: planned mix within +1% perplexity at >= 4x smaller linear weights: "
              f"{100 * mix['relative_delta']:+.2f}% at {mix['smaller']:.2f}x -> "
              f"{'met' if mix['relative_delta'] <= 0.01 and mix['smaller'] >= 4 else 'missed'}")
    return {"rows": rows, "linear_weights": weights}


FORMS = {  # one [1024, 2816] linear at batch 1: quantize-weights options (None: fp32)
    "fp32 MatMul": None,
    "int4 MatMulNBits level 0": {"format": "int4", "accuracy_level": "0"},
    "int4 MatMulNBits level 4": {"format": "int4", "accuracy_level": "4"},
    "nvfp4 8-bit MatMulNBits level 0": {"format": "nvfp4", "accuracy_level": "0", "fp4_form": "nbits8"},
    "nvfp4 8-bit MatMulNBits level 4": {"format": "nvfp4", "accuracy_level": "4", "fp4_form": "nbits8"},
    "nvfp4 W4A16MatMul function": {"format": "nvfp4", "accuracy_level": "0", "fp4_form": "function"},
}


def forms_part(args) -> dict:
    """ms of one linear per weight form in ONNX Runtime (default optimizations: the function folds),
    interleaved; and the bytes the session's graph keeps."""
    import numpy as np
    import onnx_ir as ir
    import onnxruntime as ort

    from mlpdeploy.passes.pipeline import PassSpec, run_pipeline

    k, n = 1024, 2816
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
    x = rng.standard_normal((1, k)).astype(np.float32)
    sessions, stored = {}, {}
    for name, options in FORMS.items():
        xv = ir.val("x", ir.DataType.FLOAT, ["batch", k])
        node = ir.node("MatMul", [xv, ir.Value(name="w", const_value=ir.tensor(weight, name="w"), type=ir.TensorType(ir.DataType.FLOAT),
                                                shape=ir.Shape([k, n]))], name="mm",
                       metadata_props={"pkg.torch.onnx.name_scopes": repr(["", "proj", "linear"])})
        node.outputs[0].name, node.outputs[0].dtype, node.outputs[0].shape = "y", ir.DataType.FLOAT, ir.Shape(["batch", n])
        graph = ir.Graph([xv], node.outputs, nodes=[node], initializers=[node.inputs[1]], opset_imports={"": 21}, name="linear")
        model = ir.Model(graph, ir_version=10)
        stored[name] = 4 * k * n
        if options:
            stored[name] = run_pipeline(model, [PassSpec("quantize-weights", dict(options))])[0]["bytes"]
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        sessions[name] = ort.InferenceSession(ir.to_proto(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
    times = {name: [] for name in sessions}
    for _ in range(5):
        for session in sessions.values():
            session.run(None, {"x": x})
    for _ in range(40):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {"x": x})
            times[name].append(time.perf_counter() - start)
    base = float(np.median(times["fp32 MatMul"]))
    print(f"\none linear [{k}, {n}], batch 1, ONNX Runtime CPU, {args.threads} threads; median ms over 40 interleaved runs")
    rows = {}
    for name, samples in times.items():
        ms = 1e3 * float(np.median(samples))
        rows[name] = {"ms": ms, "vs_fp32": ms / (1e3 * base), "stored_bytes": stored[name]}
        print(f"  {name:34s}{ms:9.3f} ms  {ms / (1e3 * base):6.2f}x fp32   graph weight bytes {stored[name]:,}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="forms,ppl,decode")
    parser.add_argument("--contexts", default="16,128,512")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plan", default="auto",
                        help="plan.json of `analyze llama-small --quant ...` for the 'planned mix' row; auto: make it (--max-metric-delta 1%%); none: skip")
    parser.add_argument("--task-samples", type=int, default=0, help="eval samples for perplexity (0: the whole eval split)")
    parser.add_argument("--no-fp4", action="store_true", help="decode: leave out the two nvfp4 variants")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    parts = args.parts.split(",")
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"threads": args.threads}
    if "forms" in parts:
        data["forms"] = forms_part(args)
    if "ppl" in parts:
        data["ppl"] = ppl_part(args)
    if "decode" in parts:
        data["decode"] = decode_part(args)
    print(f"machine: {machine()}")
    print(f"wrote {write_results('quant', data, args.json)}")


if __name__ == "__main__":
    main()
