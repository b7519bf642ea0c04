"""`bench --decode --prompts FILE.jsonl`: the table and JSON of `runtime.prompt_bench`."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from mlpdeploy.cli.app import console
from mlpdeploy.errors import MlpdeployError


def bench_prompt_set(engine, path: Path, new_tokens: int, repeats: int, chat: bool | None, system: str | None, speculative: str | None,
                     check_plain: bool, threads: int | None):
    """Rows (one per prompt) and the extra JSON fields (`aggregate`, `prompts`, `speculative`)."""
    from mlpdeploy.runtime.generate import CachedGenerator
    from mlpdeploy.runtime.prompt_bench import bench_prompts, encode_prompts, load_prompts
    from mlpdeploy.runtime.speculative import make_drafter, parse_mode
    from mlpdeploy.runtime.tokenizer import tokenizer_for

    if engine.cache is None:
        raise MlpdeployError(f"{engine.path} has no KV cache; --decode needs a `compile --kv-cache` artifact")
    if check_plain and not speculative:
        raise MlpdeployError("--check-plain compares a --speculative run with plain decoding; add --speculative MODE")
    mode = parse_mode(speculative) if speculative else None
    texts = load_prompts(path)
    tokenizer = tokenizer_for(engine.manifest, engine.path.parent)
    chat = tokenizer.has_chat_template if chat is None else chat
    if chat and not tokenizer.has_chat_template:
        raise MlpdeployError(f"{engine.manifest.source}'s tokenizer has no chat template; use --no-chat")
    if system and not chat:
        raise MlpdeployError("--system needs the chat template (drop --no-chat)")
    prompts = encode_prompts(texts, tokenizer, chat, system)
    generator = CachedGenerator(engine, make_drafter(mode, engine, threads) if mode else None)
    with console.status("timing") as status:
        rows, total = bench_prompts(generator, prompts, new_tokens, tokenizer.stop_token_ids, repeats, check_plain=check_plain,
                                    on_prompt=lambda i: status.update(f"timing prompt {i + 1} of {len(prompts)}"))
    _print(rows, total, engine, path, new_tokens, speculative)
    return rows, {"aggregate": total, "prompts": {"file": str(path), "chat": chat, "system": system, "new_tokens": new_tokens},
                  "speculative": speculative}


def _print(rows, total: dict, engine, path: Path, new_tokens: int, speculative: str | None) -> None:
    title = f"decode: {engine.path.name} on {path.name} ({new_tokens} new tokens at most, greedy{', ' + speculative if speculative else ''})"
    table = Table(title=title)
    columns = ["prompt", "prompt tokens", "generated", "prefill ms", "decode ms", "tokens/s"]
    if speculative:
        columns += ["accepted/drafted", "tokens/step"]
    if any(r.plain for r in rows):
        columns.append("same as plain")
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        cells = [str(r.index), str(r.prompt_tokens), str(len(r.output_ids)), f"{r.prefill_ms:.1f}", f"{r.decode_ms:.1f}", f"{r.tokens_per_second:.1f}"]
        if speculative:
            s = r.speculative
            cells += [f"{s['accepted']}/{s['drafted']}", f"{(len(r.output_ids) - 1) / s['rounds']:.2f}" if s["rounds"] else "-"]
        if r.plain:
            cells.append("yes" if r.plain["same"] else f"from token {r.plain['departs_at']}" + (" (near-tie)" if r.plain["near_tie"] else " (NO near-tie)"))
        table.add_row(*cells)
    console.print(table)
    line = f"all {total['prompts']} prompts: {total['generated_tokens']} tokens in {total['seconds']:.2f} s, {total['tokens_per_second']:.1f} tokens/s"
    spec = total.get("speculative")
    if spec:
        rate = f"{spec['acceptance']:.0%}" if spec["acceptance"] is not None else "-"
        line += f"; {rate} of {spec['drafted']} drafts accepted, {spec['tokens_per_round']:.2f} tokens per step"
    if "same_as_plain" in total:
        line += f"; {total['same_as_plain']} of {total['prompts']} outputs as plain decoding's"
    console.print(line, markup=False)
