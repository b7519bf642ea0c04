"""Redundancy pruning (drop-layers): quality and decode/prefill latency vs sublayers dropped.

    python bench/drop_layers.py [--part all|small|anchor|plan] [--threads N] [--rounds 5] [--new-tokens 48]
                                [--prompt 128] [--task-samples 128] [--budgets 0.01,0.5] [--json PATH]

Every artifact is made by the public `compile_model` (export with --kv-cache, rewrite, build for
ONNX Runtime CPU, validate), so what is timed is what mlpdeploy ships, and its perplexity is the
one validation measured on that artifact (first --task-samples eval samples).

* small: the trained llama-small, 0, 1, 2, ... of its attention sublayers dropped (lowest
  redundancy score first, from `analyze --redundancy`), the same for MLP sublayers and whole
  blocks: perplexity and decode ms/token, prefill ms.
* anchor: the anchor-shaped decoder (Hugging Face LlamaConfig hidden 1024, intermediate 2816,
  4 layers, 16 heads, vocab 512, random weights, built here, nothing downloaded): decode
  ms/token and prefill ms vs the fraction of attention dropped (deepest first; latency only).
* plan: `analyze llama-small --redundancy --max-metric-delta B` then compile the plan with the
  cache, for each budget B (perplexity points): what the planner dropped, the measured delta,
  and decode ms/token against the undropped artifact.

Timing: all artifacts of a part are loaded, then timed in rounds, each round running every
artifact once in turn (`CachedGenerator` greedy generation through `runtime.measure`: one
prefill of --prompt tokens, then --new-tokens decode steps, each step timed), so load on a
shared machine hits them alike. Reported: decode p50 (and p90) over all steps of all rounds,
median prefill, and ratios to the undropped artifact (> 1: faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, write_results  # noqa: E402

from mlpdeploy.analyze import AnalyzeOptions, analyze_model  # noqa: E402
from mlpdeploy.compile import CompileOptions, compile_model  # noqa: E402
from mlpdeploy.passes import parse_pass_spec  # noqa: E402
from mlpdeploy.runtime.engine import Engine  # noqa: E402
from mlpdeploy.runtime.generate import CachedGenerator  # noqa: E402
from mlpdeploy.runtime.measure import generator_decode, summarize  # noqa: E402

KINDS = ("attention", "mlp", "block")


def compile_variant(model: str, out: Path, sites: list[str], args, plan: Path | None = None) -> dict:
    passes = [parse_pass_spec("drop-layers:scopes=" + "+".join(sites))] if sites else []
    start = time.perf_counter()
    report = compile_model(model, out, CompileOptions(kv_cache=True, passes=passes, plan=plan, task_limit=args.task_samples))
    task = report["validation"].get("task") or {}
    return {"dir": out, "sites": sites, "compile_s": round(time.perf_counter() - start, 1), "passed": report["passed"],
            "cache_layers": report["kv_cache"]["layers"], "perplexity": task.get("candidate"), "reference": task.get("reference"),
            "max_abs_vs_edited_torch": report["validation"]["outputs"]["logits"]["max_abs"]}


def time_variants(variants: dict[str, dict], vocab: int, args) -> None:
    """Decode ms/token (p50, p90) and prefill ms of every variant, in interleaved rounds; adds them to each."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, vocab, args.prompt).tolist()
    generators = {k: CachedGenerator(Engine.load(v["dir"], threads=args.threads)) for k, v in variants.items()}
    decode = {k: generator_decode(g) for k, g in generators.items()}
    steps: dict[str, list[float]] = {k: [] for k in variants}
    prefill: dict[str, list[float]] = {k: [] for k in variants}
    for fn in decode.values():  # warm up
        fn([prompt], 4)
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            seconds, step_seconds = decode[name]([prompt], args.new_tokens)
            prefill[name].append(seconds)
            steps[name].extend(step_seconds)
    for name, v in variants.items():
        stats = summarize(args.prompt, args.new_tokens, 1, prefill[name], steps[name])
        v["decode_ms_per_token"] = round(stats.decode_ms_p50, 4)
        v["decode_ms_p90"] = round(stats.decode_ms_p90, 4)
        v["decode_ms_min"] = round(min(steps[name]) * 1e3, 4)
        v["prefill_ms"] = round(stats.prefill_ms, 3)
        v["tokens"] = generators[name].generate([prompt], 16).tokens[0]


def with_ratios(variants: dict[str, dict], base: str) -> None:
    for v in variants.values():
        v["decode_speedup"] = round(variants[base]["decode_ms_per_token"] / v["decode_ms_per_token"], 3)
        v["decode_speedup_min"] = round(variants[base]["decode_ms_min"] / v["decode_ms_min"], 3)  # less sensitive to other load
        v["prefill_speedup"] = round(variants[base]["prefill_ms"] / v["prefill_ms"], 3)


def small(args, work: Path) -> dict:
    plan = analyze_model("llama-small", AnalyzeOptions({"redundancy": None}, samples=64))
    scores = plan.analyses["redundancy"]["scores"]
    ranked = {kind: sorted((s for s, d in scores.items() if d["kind"] == kind), key=lambda s: scores[s]["score"]) for kind in KINDS}
    variants = {"none": compile_variant("llama-small", work / "none", [], args)}
    for kind in KINDS:
        for n in range(1, len(ranked[kind]) + 1):
            variants[f"{kind} {n}"] = compile_variant("llama-small", work / f"{kind}-{n}", ranked[kind][:n], args)
            print(f"  compiled {kind} {n}: {ranked[kind][:n]} ({variants[f'{kind} {n}']['compile_s']} s)", flush=True)
    time_variants(variants, 256, args)
    with_ratios(variants, "none")
    print(f"\nllama-small (trained, {sum(1 for _ in ranked['block'])} blocks), KV cache, ONNX Runtime CPU, {args.threads} threads; "
          f"perplexity on {args.task_samples} held-out eval samples; decode at past {args.prompt}..{args.prompt + args.new_tokens}")
    print(f"{'dropped':12s} {'sites':60s} {'perplexity':>10s} {'decode ms/tok':>14s} {'speedup':>8s} {'(min/min)':>9s} {'prefill ms':>11s} {'speedup':>8s}")
    for name, v in variants.items():
        print(f"{name:12s} {'+'.join(v['sites']) or '-':60s} {v['perplexity']:10.4f} {v['decode_ms_per_token']:14.3f} "
              f"{v['decode_speedup']:7.3f}x {v['decode_speedup_min']:8.3f}x {v['prefill_ms']:11.2f} {v['prefill_speedup']:7.3f}x", flush=True)
    return {"scores": {s: d["score"] for s, d in scores.items()}, "variants": _clean(variants)}


def anchor(args, work: Path) -> dict:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=512, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=1024)
    directory = work / "anchor-hf"
    transformers.LlamaForCausalLM(config).save_pretrained(str(directory))
    layers = config.num_hidden_layers
    variants = {}
    for n in range(layers + 1):
        sites = [f"model.model.layers.{i}.self_attn" for i in range(layers - n, layers)]  # deepest first
        variants[f"{n}/{layers}"] = compile_variant(str(directory), work / f"anchor-{n}", sites, args)
        print(f"  compiled anchor, attention dropped {n}/{layers} ({variants[f'{n}/{layers}']['compile_s']} s)", flush=True)
    time_variants(variants, 512, args)
    with_ratios(variants, f"0/{layers}")
    print(f"\nanchor-shaped decoder (HF LLaMA, d=1024, h=2816, {layers} layers, 16 heads, vocab 512, random weights, fp32), KV cache, "
          f"ONNX Runtime CPU, {args.threads} threads; decode at past {args.prompt}..{args.prompt + args.new_tokens}")
    print(f"{'attention dropped':18s} {'cache layers':>13s} {'decode ms/tok':>14s} {'speedup':>8s} {'(min/min)':>9s} {'prefill ms':>11s} {'speedup':>8s}")
    for name, v in variants.items():
        print(f"{name:18s} {str(v['cache_layers']):>13s} {v['decode_ms_per_token']:14.3f} {v['decode_speedup']:7.3f}x "
              f"{v['decode_speedup_min']:8.3f}x {v['prefill_ms']:11.2f} {v['prefill_speedup']:7.3f}x", flush=True)
    return {"config": {"hidden": 1024, "intermediate": 2816, "layers": layers, "heads": 16, "vocab": 512}, "variants": _clean(variants)}


def planned(args, work: Path) -> dict:
    variants = {"none": compile_variant("llama-small", work / "plan-none", [], args)}
    plans = {}
    for budget in args.budgets:
        plan = analyze_model("llama-small", AnalyzeOptions({"redundancy": None}, max_metric_delta=budget, eval_samples=args.task_samples))
        path = plan.save(work / f"plan-{budget}.json")
        planner = plan.analyses["redundancy"]["planner"]
        plans[budget] = {"dropped": planner["dropped"], "planned_delta": planner["degradation"]}
        variants[f"budget {budget}"] = compile_variant("llama-small", work / f"plan-{budget}", [], args, plan=path)
        variants[f"budget {budget}"]["sites"] = planner["dropped"]
        print(f"  planned with budget {budget} perplexity: drop {planner['dropped'] or 'nothing'}", flush=True)
    time_variants(variants, 256, args)
    with_ratios(variants, "none")
    print(f"\nanalyze llama-small --redundancy --max-metric-delta B, then compile --plan --kv-cache (perplexity on {args.task_samples} held-out samples)")
    print(f"{'':14s} {'dropped':40s} {'perplexity':>10s} {'delta':>8s} {'within':>7s} {'decode ms/tok':>14s} {'speedup':>8s} {'(min/min)':>9s}")
    base = variants["none"]["perplexity"]
    for name, v in variants.items():
        delta = v["perplexity"] - base
        budget = float(name.split()[1]) if name != "none" else 0.0
        print(f"{name:14s} {'+'.join(v['sites']) or '-':40s} {v['perplexity']:10.4f} {delta:+8.4f} {str(delta <= budget + 1e-9):>7s} "
              f"{v['decode_ms_per_token']:14.3f} {v['decode_speedup']:7.3f}x {v['decode_speedup_min']:8.3f}x", flush=True)
    return {"plans": {str(k): v for k, v in plans.items()}, "variants": _clean(variants)}


def _clean(variants: dict[str, dict]) -> dict[str, dict]:
    return {k: {kk: vv for kk, vv in v.items() if kk != "dir"} for k, v in variants.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "small", "anchor", "plan"], default="all")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--task-samples", type=int, default=128)
    parser.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=[0.01, 0.5])
    parser.add_argument("--json", default=str(RESULTS / "drop_layers.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlpdeploy-drop-bench-"))
    results = {}
    try:
        if args.part in ("all", "small"):
            results["llama_small"] = small(args, work)
        if args.part in ("all", "anchor"):
            results["anchor"] = anchor(args, work)
        if args.part in ("all", "plan"):
            results["plan"] = planned(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = write_results("drop_layers", {"machine": {"ort_intra_op_threads": args.threads},
                                        "config": {k: v for k, v in vars(args).items() if k != "json"}, "results": results}, args.json)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
