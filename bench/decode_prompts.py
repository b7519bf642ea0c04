"""Generation on real prompts: every mlpdeploy decoding mode vs onnxruntime-genai plain and n-gram, one run.

    python bench/decode_prompts.py --artifact DIR [--model .cache/real/smollm2-135m] [--genai DIR]
        [--sets bench/prompts/grounded.jsonl,bench/prompts/open.jsonl] [--modes plain,ngram,self:PLAN,draft:DIR,heads@DIR]
        [--new-tokens 96] [--threads 2] [--rounds 1] [--json PATH]

(also `python bench/decode.py --prompts ...`). `--artifact` is an mlpdeploy `compile --kv-cache`
build of `--model` (e.g. `--pass quantize-weights:format=int4`); `--genai` an onnxruntime-genai
build of the same directory (default: its model builder makes one, int4, in a temporary
directory). Every prompt is encoded once with the model's chat template and the same ids go to
every variant; each generates greedily up to --new-tokens, stopping at the model's end tokens.
Variants take turns prompt by prompt (every other prompt in reverse order, each turn after a
0.2 s pause that lets the previous variant's idle threads stop spinning: bench/common.py),
--rounds times; a prompt's time is its median over rounds. Reported per set: tokens/s (all generated tokens over
all prefill + decode wall time), the ratio to onnxruntime-genai's best mode, acceptance, and
whether greedy outputs equal the same engine's plain decoding (mlpdeploy: a departure must sit
at a recorded near-tie; genai records none). A mode written `MODE@DIR` runs on the artifact in DIR
instead of --artifact (e.g. `heads@out-heads`: the draft heads' build, while plain and ngram run on
the build without heads, whose steps do not pay for the heads' outputs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, settle, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


class Mlpdeploy:
    """An mlpdeploy decoding mode over a shared engine."""

    def __init__(self, engine, mode: str | None, threads: int, stop: list[int]):
        from mlpdeploy.runtime.generate import CachedGenerator
        from mlpdeploy.runtime.speculative import make_drafter

        self.generator = CachedGenerator(engine, make_drafter(mode, engine, threads) if mode else None)
        self.stop = stop

    def run(self, prompt: list[int], new_tokens: int) -> dict:
        result = self.generator.generate([prompt], new_tokens, stop_tokens=self.stop)
        return {"output_ids": result.tokens[0], "prefill_s": result.prefill_seconds, "wall_s": result.total_seconds,
                "speculative": result.speculative, "near_ties": [t.index for t in result.near_ties[0]]}


class Genai:
    """onnxruntime-genai's own generator, plain or with its n-gram drafter."""

    def __init__(self, directory: Path, threads: int, ngram: tuple[int, int] | None):
        import onnxruntime_genai as og

        self.og, self.ngram = og, ngram
        config = og.Config(str(directory))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)

    def run(self, prompt: list[int], new_tokens: int) -> dict:
        import numpy as np

        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + new_tokens, do_sample=False)
        if self.ngram:
            params.set_speculative_options(ngram_size=self.ngram[0], max_draft_tokens=self.ngram[1])
        start = time.perf_counter()
        generator = og.Generator(self.model, params)
        generator.append_tokens(np.array(prompt, np.int32))  # the prompt's forward pass
        prefill = time.perf_counter() - start
        while not generator.is_done():
            generator.generate_next_token()
        wall = time.perf_counter() - start
        output = [int(t) for t in generator.get_sequence(0)[len(prompt):]]
        stats = generator.get_speculative_stats() if self.ngram else None
        return {"output_ids": output, "prefill_s": prefill, "wall_s": wall, "speculative": _plain_dict(stats), "near_ties": []}


def _plain_name(name: str, variants: dict) -> str:
    """The plain variant a mode's output is checked against: the same artifact's plain run if there is one."""
    if not name.startswith("mlpdeploy"):
        return "genai plain"
    where = name.partition("@")[2]
    return f"mlpdeploy plain@{where}" if where and f"mlpdeploy plain@{where}" in variants else "mlpdeploy plain"


def _plain_dict(stats):
    if stats is None:
        return None
    return {k: (v if isinstance(v, (int, float, str, bool)) or v is None else str(v)) for k, v in dict(stats).items()}


def build_genai(hf: Path, work: Path) -> Path:
    out = work / "genai-int4"
    if not (out / "genai_config.json").exists():
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", "int4",
                        "-e", "cpu", "-c", str(work / "genai-cache")], check=True, capture_output=True)
    return out


def load_sets(paths: list[Path], tokenizer) -> dict[str, list[list[int]]]:
    from mlpdeploy.runtime.prompt_bench import encode_prompts, load_prompts

    return {p.stem: encode_prompts(load_prompts(p), tokenizer, tokenizer.has_chat_template) for p in paths}


def measure(variants: dict, prompts: list[list[int]], new_tokens: int, rounds: int) -> dict[str, list[dict]]:
    """Per variant, one record per prompt (the median-time round), variants interleaved."""
    runs: dict[str, list[list[dict]]] = {name: [[] for _ in prompts] for name in variants}
    order = list(variants.items())
    for r in range(rounds):
        for i, prompt in enumerate(prompts):
            for name, variant in order if (i + r) % 2 == 0 else order[::-1]:
                settle()
                runs[name][i].append(variant.run(prompt, new_tokens))
    return {name: [sorted(rs, key=lambda x: x["wall_s"])[len(rs) // 2] for rs in per] for name, per in runs.items()}


def summarize(records: dict[str, list[dict]], plain_of: dict[str, str]) -> dict[str, dict]:
    """tokens/s, acceptance and equality with the same engine's plain output, per variant."""
    out = {}
    for name, recs in records.items():
        tokens = sum(len(r["output_ids"]) for r in recs)
        wall = sum(r["wall_s"] for r in recs)
        row = {"tokens_per_second": tokens / wall, "generated_tokens": tokens, "seconds": wall,
               "prefill_ms_median": statistics.median(r["prefill_s"] for r in recs) * 1e3}
        specs = [r["speculative"] for r in recs if r["speculative"]]
        if specs and "drafted" in specs[0]:
            drafted, accepted = sum(s["drafted"] for s in specs), sum(s["accepted"] for s in specs)
            row["acceptance"] = accepted / drafted if drafted else None
            row["drafted"], row["accepted"] = drafted, accepted
            row["tokens_per_step"] = (tokens - len(recs)) / max(1, sum(s["rounds"] for s in specs))
        elif specs:
            row["genai_stats"] = specs
        plain = plain_of.get(name)
        if plain is not None:
            row["same_as_plain"], row["departures"] = _departures(records[plain], recs)
        out[name] = row
    return out


def _departures(plain: list[dict], other: list[dict]) -> tuple[int, list[dict]]:
    from mlpdeploy.runtime.ties import first_difference

    same, departures = 0, []
    for i, (a, b) in enumerate(zip(plain, other)):
        index = first_difference(a["output_ids"], b["output_ids"])
        if index is None or index >= min(len(a["output_ids"]), len(b["output_ids"])):
            same += 1
            continue
        departures.append({"prompt": i, "token": index, "near_tie": index in set(a["near_ties"]) | set(b["near_ties"])})
    return same, departures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True, type=Path, help="mlpdeploy compile --kv-cache output directory")
    parser.add_argument("--model", type=Path, default=ROOT / ".cache/real/smollm2-135m", help="the Hugging Face directory it was built from")
    parser.add_argument("--genai", type=Path, help="an onnxruntime-genai build of --model (default: built here, int4)")
    parser.add_argument("--sets", default="bench/prompts/grounded.jsonl,bench/prompts/open.jsonl")
    parser.add_argument("--modes", default="plain,ngram", help="comma list of mlpdeploy modes: plain or --speculative modes (separate with ;)")
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from mlpdeploy.runtime.engine import Engine
    from mlpdeploy.runtime.tokenizer import tokenizer_for

    engine = Engine.load(args.artifact, threads=args.threads)
    tokenizer = tokenizer_for(engine.manifest, engine.path.parent)
    stop = list(tokenizer.stop_token_ids)
    modes = [m for m in (args.modes.split(";") if ";" in args.modes else args.modes.split(",")) if m]
    engines = {None: engine}
    variants = {}
    for spec in modes:
        mode, _, where = spec.partition("@")
        if where and where not in engines:
            engines[where] = Engine.load(Path(where), threads=args.threads)
        variants["mlpdeploy " + spec] = Mlpdeploy(engines[where or None], None if mode == "plain" else mode, args.threads, stop)
    with tempfile.TemporaryDirectory() as tmp:
        genai_dir = args.genai or build_genai(args.model, Path(tmp))
        variants["genai plain"] = Genai(genai_dir, args.threads, None)
        variants["genai ngram(3,8)"] = Genai(genai_dir, args.threads, (3, 8))
        sets = load_sets([ROOT / s if not Path(s).is_absolute() else Path(s) for s in args.sets.split(",")], tokenizer)
        for variant in variants.values():  # warm-up: first runs allocate
            variant.run(next(iter(sets.values()))[0], 8)
        plain_of = {name: _plain_name(name, variants) for name in variants}
        plain_of = {k: v for k, v in plain_of.items() if k != v and v in variants}
        results = {}
        for set_name, prompts in sets.items():
            records = measure(variants, prompts, args.new_tokens, args.rounds)
            results[set_name] = {"summary": summarize(records, plain_of), "records": records}
    print(f"\n{args.artifact} vs onnxruntime-genai ({genai_dir.name if args.genai else 'built here, int4'}); {args.new_tokens} new tokens "
          f"at most, greedy, {args.threads} threads, {args.rounds} round(s); tokens/s = generated tokens / (prefill + decode wall time)")
    for set_name, data in results.items():
        summary = data["summary"]
        best = max((n for n in summary if n.startswith("genai")), key=lambda n: summary[n]["tokens_per_second"])
        print(f"\n{set_name} ({len(sets[set_name])} prompts); best genai mode: {best}")
        print(f"{'variant':42s} {'tokens/s':>9s} {'vs genai best':>14s} {'acceptance':>11s} {'tokens/step':>12s} {'same as plain':>14s}")
        for name, row in summary.items():
            ratio = row["tokens_per_second"] / summary[best]["tokens_per_second"]
            acc = f"{row['acceptance']:.0%}" if row.get("acceptance") is not None else "-"
            per_step = f"{row['tokens_per_step']:.2f}" if "tokens_per_step" in row else "-"
            same = "-"
            if "same_as_plain" in row:
                ties = sum(d["near_tie"] for d in row["departures"])
                same = f"{row['same_as_plain']}/{len(sets[set_name])}" + (f" ({ties} at near-ties)" if row["departures"] else "")
            print(f"{name:42s} {row['tokens_per_second']:9.1f} {ratio:13.2f}x {acc:>11s} {per_step:>12s} {same:>14s}")
    print(f"machine: {machine()}")
    data = {"artifact": str(args.artifact), "model": str(args.model), "new_tokens": args.new_tokens, "threads": args.threads,
            "rounds": args.rounds, "modes": modes, "results": results}
    print(f"wrote {write_results('decode_prompts', data, args.json)}")


if __name__ == "__main__":
    main()
