"""Decode with a KV cache: mlpdeploy vs onnxruntime-genai vs torch, one run.

    python bench/decode.py [--model DIR] [--contexts 16,128,512] [--new-tokens 32] [--rounds 4] [--threads 2]
                           [--kv-heads 16] [--int4] [--int4-embedding] [--int4-kernels] [--no-validate] [--keep DIR] [--json PATH]
    python bench/decode.py --prompts --artifact DIR [...]   (real prompts: bench/decode_prompts.py)

The model is a Hugging Face directory (`--model`, e.g. .cache/real/smollm2-135m), else the
anchor-shaped decoder (bench/anchor.py, `--kv-heads`). Variants, all on the same directory,
interleaved round by round (each turn after a 0.2 s pause that lets the previous variant's idle
threads stop spinning; every other round in reverse order, so no variant always runs right
after the same one):
  * mlpdeploy: `compile --kv-cache` (ONNX Runtime, ort-decoder fusions, shared cache buffer),
    driven by mlpdeploy.runtime.CachedGenerator (with --model: only with --fp32);
  * mlpdeploy, unfused: the same with --no-ort-fusions (the exported attention as is; anchor only);
  * with --int4, mlpdeploy int4: `--pass quantize-weights` (int4, block 32, accuracy level 4:
    what `analyze --quant --max-metric-delta 1%` plans on llama-small, the trained counterpart);
  * with --int4-embedding, mlpdeploy int4+emb: the same plus `--pass quantize-embedding` (the
    token table as INT4 GatherBlockQuantized, sharing a tied lm_head's codes);
  * with --int4-kernels, mlpdeploy int4+emb kernels: the same built with --ort-kernels, so its
    int4 MatMulNBits nodes run mlpdeploy's MatMulInt4 kernel (plugins/matmul_nbits);
  * with --gated-sparsity S,..., mlpdeploy sparse S: `--pass sparse-mlp` in threshold mode, each
    MLP's threshold the S-quantile of |silu(gate)| on calibration tokens (`analyze --sparsity`),
    with `--ort-kernels` (the compiled SparseMLP kernel);
  * genai fp32 / int4: onnxruntime-genai's model builder (`-e cpu`), driven by its own
    Generator (skipped, with a note, when the `bench` extra is not installed);
  * mlpdeploy[ int4[+emb]], genai loop: mlpdeploy's build driven by onnxruntime-genai's Generator
    through the genai_config.json every --kv-cache build writes (same graph, C++ step loop);
  * torch eager with its cache (the model's own forward with a DynamicCache).
--no-validate builds the mlpdeploy variants stage by stage (export once, rewrite, build) without
`compile`'s validation (minutes on a 30-layer model; the tests prove the graphs). Decode at
context C: a C-token prompt is prefilled (timed as "prefill"), then each new token is timed
alone. Samples during which the process waited for a CPU for more than 5% of the time are set
aside (other work on a shared machine); medians are over the rest. Prefill is also timed at 128
tokens. The JSON keeps every variant's model bytes.
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
from common import RESULTS, Sampler, machine, settle, write_results  # noqa: E402
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
        state.reuse_logits = True  # as generate's loop: each step's logits are used before the next
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


def mlpdeploy_variants(hf: Path, int4: bool, sparsities: list[float], int4_embedding: bool = False,
                       fp32: bool = True, int4_kernels: bool = False) -> dict[str, tuple[list, dict]]:
    """name -> (passes, build options) of every mlpdeploy variant asked for."""
    from mlpdeploy.passes.pipeline import PassSpec

    variants = {"mlpdeploy": ([], {}), "mlpdeploy unfused": ([], {"fusions": False})} if fp32 else {}
    int4_pass = PassSpec("quantize-weights", {"format": "int4"})
    if int4:
        variants["mlpdeploy int4"] = ([int4_pass], {})
    if int4_embedding:
        variants["mlpdeploy int4+emb"] = ([int4_pass, PassSpec("quantize-embedding")], {})
    if int4_kernels:  # the same graph, its int4 MatMulNBits nodes run mlpdeploy's MatMulInt4 kernel
        variants["mlpdeploy int4+emb kernels"] = ([int4_pass, PassSpec("quantize-embedding")], {"kernels": True})
    for s, sites in (gated_thresholds(hf, sparsities) if sparsities else {}).items():
        variants[f"mlpdeploy sparse {s:.0%}"] = ([PassSpec("sparse-mlp", sites=sites)], {"kernels": True})
    return variants


def build_mlpdeploy(hf: Path, work: Path, variants: dict[str, tuple[list, dict]], validate: bool) -> dict[str, Path]:
    """name -> the built artifact (a compile directory, or with `validate` off the built .onnx) of each
    variant; artifacts already in `work` (--keep) are reused."""
    from mlpdeploy.backends import get_backend
    from mlpdeploy.backends.onnxruntime import OrtOptions
    from mlpdeploy.compile import CompileOptions, compile_model

    outputs, exported = {}, None
    for name, (passes, build) in variants.items():
        out = work / name.replace(" ", "-").replace("%", "").replace("+", "-")
        options = OrtOptions(device="cpu", **build)
        if validate:
            if not (out / "report.json").exists():
                report = compile_model(str(hf), out, CompileOptions(kv_cache=True, passes=passes, build=options))
                if not report["passed"]:
                    raise SystemExit(f"{name}: validation failed: {report['validation']['outputs']}")
            outputs[name] = out
            continue
        built = out / "model.ort.onnx"
        if not built.exists():
            from mlpdeploy.export import export_model
            from mlpdeploy.model import load_model
            from mlpdeploy.model.kv_cache import with_kv_cache
            from mlpdeploy.passes import rewrite_model

            if exported is None:
                exported = work / "export" / "model.onnx"
                if not exported.exists():
                    export_model(with_kv_cache(load_model(str(hf))), exported)
            out.mkdir(parents=True, exist_ok=True)
            rewritten = rewrite_model(exported, out / "model.opt.onnx", passes).model_path
            get_backend("onnxruntime").build(rewritten, built, options)
        outputs[name] = built
    return outputs


def build_variants(hf: Path, work: Path, threads: int, int4: bool, sparsities: list[float] = (), int4_embedding: bool = False,
                   fp32: bool = True, validate: bool = True, genai_fp32: bool = True, torch_eager: bool = True,
                   int4_kernels: bool = False) -> tuple[dict, dict]:
    """Every variant that can be built here, and a note for each that cannot."""
    variants, notes = {}, {}
    outputs = build_mlpdeploy(hf, work, mlpdeploy_variants(hf, int4, list(sparsities), int4_embedding, fp32, int4_kernels), validate)
    for name, out in outputs.items():
        variants[name] = MlpdeployDecoder(out, threads)
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        notes["genai"] = "onnxruntime-genai is not installed (pip install 'mlpdeploy[bench]')"
    else:
        for precision in (("fp32",) if genai_fp32 else ()) + (("int4",) if int4 or int4_embedding or int4_kernels else ()):
            out = work / f"genai-{precision}"
            if not (out / "genai_config.json").exists():
                subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", precision,
                                "-e", "cpu", "-c", str(work / "genai-cache")], check=True, capture_output=True)
            variants[f"genai {precision}"] = GenaiDecoder(out, threads)
        # mlpdeploy's own builds driven by onnxruntime-genai's C++ generator (the genai_config.json compile writes)
        for name in ("mlpdeploy", "mlpdeploy int4", "mlpdeploy int4+emb"):
            if name in outputs:
                variants[f"{name}, genai loop"] = GenaiDecoder(outputs[name] if outputs[name].is_dir() else outputs[name].parent, threads)
    if torch_eager:
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
            settle()
            state, token = prefill[name].call(variant.prefill, prompt, new_tokens + 1)
            for _ in range(new_tokens):
                token = decode[name].call(variant.step, state, token)
    return {name: {"prefill": prefill[name].summary_ms(), "decode": decode[name].summary_ms()} for name in variants}


def model_shape(hf: Path) -> dict:
    """Layers, KV heads, head size and vocabulary from the directory's config.json."""
    config = json.loads((hf / "config.json").read_text())
    heads = config["num_attention_heads"]
    return {"layers": config["num_hidden_layers"], "kv_heads": config.get("num_key_value_heads", heads), "vocab": config["vocab_size"],
            "head_dim": config.get("head_dim") or config["hidden_size"] // heads, "hidden": config["hidden_size"],
            "mlp": config["intermediate_size"], "heads": heads}


def counterpart(name: str) -> str:
    """The genai variant an mlpdeploy variant is held against (same precision)."""
    return "genai int4" if "int4" in name else "genai fp32"


def main() -> None:
    if "--prompts" in sys.argv[1:]:  # real prompts, every decoding mode vs genai plain and n-gram (bench/decode_prompts.py)
        from decode_prompts import main as prompts_main

        return prompts_main([a for a in sys.argv[1:] if a != "--prompts"])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a Hugging Face causal LM directory (default: the anchor decoder)")
    parser.add_argument("--contexts", default="16,128,512")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kv-heads", type=int, default=16, help="the anchor decoder's KV heads")
    parser.add_argument("--int4", action="store_true", help="also onnxruntime-genai's int4 build and mlpdeploy's")
    parser.add_argument("--int4-embedding", action="store_true", help="also mlpdeploy int4 with quantize-embedding")
    parser.add_argument("--int4-kernels", action="store_true",
                        help="also mlpdeploy int4+emb built with --ort-kernels (MatMulNBits nodes run mlpdeploy's MatMulInt4 kernel)")
    parser.add_argument("--fp32", action=argparse.BooleanOptionalAction, default=None,
                        help="mlpdeploy's float32 builds (default: on for the anchor, off with --model)")
    parser.add_argument("--no-genai-fp32", action="store_true", help="leave out onnxruntime-genai's float32 build")
    parser.add_argument("--no-torch", action="store_true", help="leave out torch eager")
    parser.add_argument("--no-validate", action="store_true", help="build mlpdeploy's variants without compile's validation")
    parser.add_argument("--keep", default=None, help="build into (and reuse builds from) this directory")
    parser.add_argument("--gated-sparsity", default="", help="comma list of MLP sparsities for sparse-mlp variants, e.g. 0.4,0.5")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    hf = Path(args.model) if args.model else anchor_dir(args.kv_heads)
    shape = model_shape(hf)
    fp32 = args.fp32 if args.fp32 is not None else args.model is None
    contexts = [int(c) for c in args.contexts.split(",")]
    roofline = measure_roofline(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        sparsities = [float(s) for s in args.gated_sparsity.split(",") if s]
        variants, notes = build_variants(hf, work, args.threads, args.int4, sparsities, args.int4_embedding, fp32,
                                         validate=not args.no_validate, genai_fp32=not args.no_genai_fp32, torch_eager=not args.no_torch,
                                         int4_kernels=args.int4_kernels)
        vocab = shape["vocab"]
        results = {f"context {c}": measure(variants, c, args.new_tokens, args.rounds, vocab, seed=c) for c in contexts}
        results["prefill 128"] = measure(variants, 128, 2, args.rounds * 2, vocab, seed=7)
    print(f"\n{hf.name} (hidden {shape['hidden']}, MLP {shape['mlp']}, {shape['layers']} layers, {shape['heads']} heads, "
          f"{shape['kv_heads']} KV heads, vocab {vocab}), batch 1, {args.threads} threads; ms, median over clean samples [clean/all]")
    width = max(len(n) for n in variants) + 2
    print(f"{'variant':{width}s}" + "".join(f"{k:>26s}" for k in results))
    for name in variants:
        cells = []
        for key, per in results.items():
            stat = per[name]["prefill" if key.startswith("prefill") else "decode"]
            cells.append(f"{stat['p50_ms']:9.3f} p90 {stat['p90_ms']:8.3f} [{stat['clean']}/{stat['samples']}]")
        print(f"{name:{width}s}" + "".join(f"{c:>26s}" for c in cells))
    ratios = {}
    for key, per in results.items():
        what = "prefill" if key.startswith("prefill") else "decode"
        pairs = {n: counterpart(n) for n in variants if n.startswith("mlpdeploy") and counterpart(n) in variants}
        ratios[key] = {n: per[n][what]["p50_ms"] / per[g][what]["p50_ms"] for n, g in pairs.items()}
        print(f"{key} {what}: mlpdeploy / genai of the same precision (< 1: mlpdeploy faster): "
              + ", ".join(f"{n} {r:.3f}x" for n, r in ratios[key].items()))
    print(f"fraction of the triad bandwidth ({roofline['triad_gb_s']:.1f} GB/s, same run) per decode step: "
          "(model bytes + fp32 KV cache read) / ms per token")
    fractions, sizes = {}, {}
    for name, variant in variants.items():
        fractions[name], sizes[name] = {}, variant.weight_bytes
        for c in contexts:
            cache_bytes = 2 * 4 * shape["layers"] * shape["kv_heads"] * shape["head_dim"] * c  # K and V, fp32
            ms = results[f"context {c}"][name]["decode"]["p50_ms"]
            fractions[name][c] = bandwidth_fraction(variant.weight_bytes + cache_bytes, ms, roofline)
        print(f"  {name:{width}s} model {variant.weight_bytes / 1e6:7.1f} MB  " + "  ".join(f"ctx {c}: {f:.0%}" for c, f in fractions[name].items()))
    for name, note in notes.items():
        print(f"note: {name}: {note}")
    print(f"machine: {machine()}")
    data = {"model": {"source": str(hf), **shape}, "settings": {"threads": args.threads, "new_tokens": args.new_tokens, "rounds": args.rounds,
            "validated": not args.no_validate}, "results": results, "ratios_vs_genai": ratios, "model_bytes": sizes, "notes": notes,
            "roofline": roofline, "bandwidth_fraction": fractions}
    print(f"wrote {write_results('decode', data, args.json)}")


if __name__ == "__main__":
    main()
