"""Decode with a KV cache on the anchor-shaped decoder: mlpdeploy vs onnxruntime-genai vs torch, one run.

    python bench/decode.py [--contexts 16,128,512] [--new-tokens 32] [--rounds 4] [--threads 2] [--kv-heads 16]
                           [--int4] [--json PATH]
    python bench/decode.py --prompts --artifact DIR [...]   (real prompts: bench/decode_prompts.py)

Variants, all on the same Hugging Face directory (bench/anchor.py), interleaved round by round
(every other round in reverse order, so no variant always runs right after the same one):
  * mlpdeploy: `compile --kv-cache` (ONNX Runtime, ort-decoder fusions, shared cache buffer),
    driven by mlpdeploy.runtime.CachedGenerator;
  * mlpdeploy, unfused: the same with --no-ort-fusions (the exported attention as is);
  * with --int4, mlpdeploy int4: `--pass quantize-weights` (int4, block 32, accuracy level 4:
    what `analyze --quant --max-metric-delta 1%` plans on llama-small, the trained counterpart);
  * with --gated-sparsity S,..., mlpdeploy sparse S: `--pass sparse-mlp` in threshold mode, each
    MLP's threshold the S-quantile of |silu(gate)| on calibration tokens (`analyze --sparsity`),
    with `--ort-kernels` (the compiled SparseMLP kernel);
  * genai fp32 / int4: onnxruntime-genai's model builder (`-e cpu`), driven by its own
    Generator (skipped, with a note, when the `bench` extra is not installed);
  * mlpdeploy[ int4], genai loop: mlpdeploy's build driven by onnxruntime-genai's Generator
    through the genai_config.json every --kv-cache build writes (same graph, C++ step loop);
  * torch eager with its cache (the model's own forward with a DynamicCache).
Decode at context C: a C-token prompt is prefilled (timed as "prefill"), then each new token is
timed alone. Samples during which the process waited for a CPU for more than 5% of the time are
set aside (other work on a shared machine); medians are over the rest. Prefill is also timed
at 128 tokens.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from anchor import anchor_dir  # noqa: E402
from common import RESULTS, Sampler, machine, write_results  # noqa: E402
from roofline import bandwidth_fraction, measure_roofline  # noqa: E402


class MlpdeployDecoder:
    def __init__(self, directory: Path, threads: int):
        from mlpdeploy.runtime.engine import Engine
        from mlpdeploy.runtime.generate import CachedGenerator
        from mlpdeploy.runtime.latency import model_bytes

        self.generator = CachedGenerator(Engine.load(directory, threads=threads))
        self.weight_bytes = model_bytes(self.generator.engine.path)

    def prefill(self, prompt: list[int], new_tokens: int):
        logits, state = self.generator.prefill([prompt], new_tokens)
        return state, int(logits[0].argmax())

    def step(self, state, token: int) -> int:
        return int(self.generator.advance(state, np.array([token]))[0].argmax())


class GenaiDecoder:
    def __init__(self, directory: Path, threads: int):
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(directory))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)
        from mlpdeploy.runtime.latency import model_bytes

        filename = json.loads((directory / "genai_config.json").read_text())["model"]["decoder"]["filename"]
        self.weight_bytes = model_bytes(directory / filename)

    def prefill(self, prompt: list[int], new_tokens: int):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
        generator = self.og.Generator(self.model, params)
        generator.append_tokens(np.array(prompt, np.int32))  # the prompt's forward pass
        generator.generate_next_token()  # picks from the prompt's logits (no forward pass)
        return generator, int(generator.get_next_tokens()[0])

    def step(self, generator, token) -> int:
        generator.generate_next_token()
        return int(generator.get_next_tokens()[0])


class TorchDecoder:
    def __init__(self, directory: Path, threads: int):
        import torch

        from mlpdeploy.model import load_model

        torch.set_num_threads(threads)
        self.torch, self.decoder = torch, load_model(str(directory)).module
        self.layout = self.decoder.cache_layout()
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.decoder.parameters())

    def prefill(self, prompt: list[int], new_tokens: int):
        torch = self.torch
        ids = torch.tensor([prompt])
        empty = torch.zeros(1, self.layout.kv_heads, 0, self.layout.head_dim)
        with torch.no_grad():
            logits, past = self.decoder.forward_cached(ids, torch.ones_like(ids), torch.arange(len(prompt))[None], [(empty, empty)] * len(self.layout.layers))
        return {"past": past, "length": len(prompt)}, int(logits[0, -1].argmax())

    def step(self, state, token: int) -> int:
        torch, n = self.torch, state["length"]
        with torch.no_grad():
            logits, state["past"] = self.decoder.forward_cached(torch.tensor([[token]]), torch.ones(1, n + 1, dtype=torch.int64),
                                                                torch.tensor([[n]]), state["past"])
        state["length"] = n + 1
        return int(logits[0, -1].argmax())


def gated_thresholds(hf: Path, sparsities: list[float]) -> dict[float, dict[str, dict]]:
    """sparsity -> sparse-mlp sites: each gated MLP's threshold for it, from one `analyze --sparsity` (64 calibration samples)."""
    from mlpdeploy.analyze.run import AnalyzeOptions, analyze_model

    sites = analyze_model(str(hf), AnalyzeOptions({"sparsity": None})).analyses["sparsity"]["sites"]
    return {s: {scope: {"threshold": site["thresholds"][str(s)]} for scope, site in sites.items() if site["kind"] == "gated"}
            for s in sparsities}


def mlpdeploy_variants(hf: Path, int4: bool, sparsities: list[float]) -> dict[str, tuple[list, dict]]:
    """name -> (passes, build options) of every mlpdeploy variant asked for."""
    from mlpdeploy.passes.pipeline import PassSpec

    variants = {"mlpdeploy": ([], {}), "mlpdeploy unfused": ([], {"fusions": False})}
    if int4:
        variants["mlpdeploy int4"] = ([PassSpec("quantize-weights", {"format": "int4"})], {})
    for s, sites in (gated_thresholds(hf, sparsities) if sparsities else {}).items():
        variants[f"mlpdeploy sparse {s:.0%}"] = ([PassSpec("sparse-mlp", sites=sites)], {"kernels": True})
    return variants


def build_variants(hf: Path, work: Path, threads: int, int4: bool, sparsities: list[float] = ()) -> tuple[dict, dict]:
    """Every variant that can be built here, and a note for each that cannot."""
    from mlpdeploy.backends.onnxruntime import OrtOptions
    from mlpdeploy.compile import CompileOptions, compile_model

    variants, notes, outputs = {}, {}, {}
    for name, (passes, build) in mlpdeploy_variants(hf, int4, list(sparsities)).items():
        out = work / name.replace(" ", "-").replace("%", "")
        options = CompileOptions(kv_cache=True, passes=passes, build=OrtOptions(device="cpu", **build))
        report = compile_model(str(hf), out, options)
        if not report["passed"]:
            raise SystemExit(f"{name}: validation failed: {report['validation']['outputs']}")
        variants[name] = MlpdeployDecoder(out, threads)
        outputs[name] = out
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        notes["genai"] = "onnxruntime-genai is not installed (pip install 'mlpdeploy[bench]')"
    else:
        for precision in ("fp32", "int4") if int4 else ("fp32",):
            out = work / f"genai-{precision}"
            subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", precision,
                            "-e", "cpu", "-c", str(work / "genai-cache")], check=True, capture_output=True)
            variants[f"genai {precision}"] = GenaiDecoder(out, threads)
        # mlpdeploy's own builds driven by onnxruntime-genai's C++ generator (the genai_config.json compile writes)
        for name in ("mlpdeploy", "mlpdeploy int4"):
            if name in outputs:
                variants[f"{name}, genai loop"] = GenaiDecoder(outputs[name], threads)
    variants["torch eager"] = TorchDecoder(hf, threads)
    return variants, notes


def measure(variants: dict, context: int, new_tokens: int, rounds: int, vocab: int, seed: int) -> dict:
    """Prefill and per-token decode samples per variant, interleaved round by round."""
    rng = np.random.default_rng(seed)
    prefill = {name: Sampler() for name in variants}
    decode = {name: Sampler() for name in variants}
    for round_index in range(rounds):
        prompt = rng.integers(2, vocab, context).tolist()
        order = list(variants.items())
        for name, variant in order if round_index % 2 == 0 else order[::-1]:  # no variant always follows the same one
            state, token = prefill[name].call(variant.prefill, prompt, new_tokens + 1)
            for _ in range(new_tokens):
                token = decode[name].call(variant.step, state, token)
    return {name: {"prefill": prefill[name].summary_ms(), "decode": decode[name].summary_ms()} for name in variants}


def main() -> None:
    if "--prompts" in sys.argv[1:]:  # real prompts, every decoding mode vs genai plain and n-gram (bench/decode_prompts.py)
        from decode_prompts import main as prompts_main

        return prompts_main([a for a in sys.argv[1:] if a != "--prompts"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="16,128,512")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kv-heads", type=int, default=16)
    parser.add_argument("--int4", action="store_true", help="also onnxruntime-genai's int4 build and mlpdeploy's")
    parser.add_argument("--gated-sparsity", default="", help="comma list of MLP sparsities for sparse-mlp variants, e.g. 0.4,0.5")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    hf = anchor_dir(args.kv_heads)
    contexts = [int(c) for c in args.contexts.split(",")]
    roofline = measure_roofline(args.threads)
    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        sparsities = [float(s) for s in args.gated_sparsity.split(",") if s]
        variants, notes = build_variants(hf, Path(tmp), args.threads, args.int4, sparsities)
        results = {f"context {c}": measure(variants, c, args.new_tokens, args.rounds, 512, seed=c) for c in contexts}
        results["prefill 128"] = measure(variants, 128, 2, args.rounds * 2, 512, seed=7)
    best_other = [n for n in variants if not n.startswith("mlpdeploy")]
    print(f"\nanchor decoder (hidden 1024, MLP 2816, 4 layers, 16 heads, {args.kv_heads} KV heads, vocab 512), batch 1, "
          f"{args.threads} threads; ms, median over clean samples [clean/all]")
    header = f"{'variant':20s}" + "".join(f"{k:>26s}" for k in results)
    print(header)
    for name in variants:
        cells = []
        for key, per in results.items():
            stat = per[name]["prefill" if key.startswith("prefill") else "decode"]
            cells.append(f"{stat['p50_ms']:9.3f} p90 {stat['p90_ms']:8.3f} [{stat['clean']}/{stat['samples']}]")
        print(f"{name:20s}" + "".join(f"{c:>26s}" for c in cells))
    for key, per in results.items():
        what = "prefill" if key.startswith("prefill") else "decode"
        ours = per["mlpdeploy"][what]["p50_ms"]
        ratios = {n: per[n][what]["p50_ms"] / ours for n in best_other}
        print(f"{key}: others / mlpdeploy = " + ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items()))
        best = min(best_other, key=lambda n: per[n][what]["p50_ms"])
        print(f"{key}: best alternative {best}; its time / each mlpdeploy variant's (> 1: mlpdeploy ahead): " + ", ".join(
            f"{n} {per[best][what]['p50_ms'] / per[n][what]['p50_ms']:.2f}x" for n in variants if n.startswith("mlpdeploy")))
    print(f"fraction of the triad bandwidth ({roofline['triad_gb_s']:.1f} GB/s, same run) per decode step: "
          "(weight bytes + fp32 KV cache read) / ms per token")
    fractions = {}
    for name, variant in variants.items():
        fractions[name] = {}
        for c in contexts:
            cache_bytes = 2 * 4 * 4 * args.kv_heads * 64 * c  # K and V, 4 layers, head dim 64, fp32
            ms = results[f"context {c}"][name]["decode"]["p50_ms"]
            fractions[name][c] = bandwidth_fraction(variant.weight_bytes + cache_bytes, ms, roofline)
        print(f"  {name:20s} weights {variant.weight_bytes / 1e6:6.1f} MB  " + "  ".join(f"ctx {c}: {f:.0%}" for c, f in fractions[name].items()))
    for name, note in notes.items():
        print(f"note: {name}: {note}")
    print(f"machine: {machine()}")
    data = {"anchor": {"kv_heads": args.kv_heads, "threads": args.threads, "new_tokens": args.new_tokens, "rounds": args.rounds},
            "results": results, "notes": notes, "roofline": roofline, "bandwidth_fraction": fractions}
    print(f"wrote {write_results('decode', data, args.json)}")


if __name__ == "__main__":
    main()
