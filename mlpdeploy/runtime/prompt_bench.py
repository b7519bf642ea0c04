"""Decoding speed on real prompts: `mlpdeploy bench --decode --prompts FILE.jsonl`.

Each line of the file is `{"prompt": "..."}`; prompts are encoded as `generate` encodes them
(the chat template when the model has one). Every prompt is generated `repeats` times after one
warm-up run (greedy unless told otherwise; a stop token ends it early); its row reports the run
with the median wall time: output ids, prefill and decode ms, tokens/s (generated tokens over
prefill + decode wall time) and, with a drafter, the acceptance statistics. The aggregate is
over the whole set: all generated tokens over all wall time.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlpdeploy.errors import MlpdeployError


@dataclass
class PromptRun:
    index: int
    prompt_tokens: int
    output_ids: list[int]
    finish: str
    prefill_ms: float
    decode_ms: float
    wall_ms: float  # from the prefill's start to the last token
    tokens_per_second: float  # generated tokens over the wall time
    runs: int
    speculative: dict | None = None
    near_ties: list[dict] = field(default_factory=list)
    plain: dict | None = None  # with check_plain: {"same", "departs_at", "near_tie"}

    def to_json(self) -> dict:
        return asdict(self)


def load_prompts(path: Path | str) -> list[str]:
    """The prompts of a JSON-lines file (one {"prompt": str} a line), or a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise MlpdeployError(f"--prompts {path} does not exist; give a .jsonl file with one {{\"prompt\": ...}} a line")
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MlpdeployError(f"{path}:{number}: not JSON ({exc.msg}); each line must be {{\"prompt\": \"...\"}}") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"]:
            raise MlpdeployError(f"{path}:{number}: each line must be an object with a non-empty string \"prompt\"")
        prompts.append(item["prompt"])
    if not prompts:
        raise MlpdeployError(f"--prompts {path} holds no prompts")
    return prompts


def encode_prompts(texts: list[str], tokenizer, chat: bool, system: str | None = None) -> list[list[int]]:
    from mlpdeploy.runtime.tokenizer import chat_messages

    return [tokenizer.encode_chat(chat_messages(t, system)) if chat else tokenizer.encode(t) for t in texts]


def bench_prompts(generator, prompts: list[list[int]], max_new_tokens: int, stop_tokens=(), repeats: int = 1, sampling=None,
                  check_plain: bool = False, on_prompt=None) -> tuple[list[PromptRun], dict]:
    """Time `generator` on each prompt (module docstring); rows and the aggregate."""
    from mlpdeploy.runtime.generate import CachedGenerator

    if repeats < 1:
        raise MlpdeployError(f"--repeats must be at least 1, got {repeats}")
    for prompt in prompts:
        generator.check([prompt], max_new_tokens)
    generator.generate([prompts[0]], min(max_new_tokens, 8), sampling, stop_tokens)  # warm-up: the session's first runs allocate
    plain = CachedGenerator(generator.engine, tie_margin=generator.tie_margin) if check_plain and generator.drafter is not None else None
    rows = []
    for index, prompt in enumerate(prompts):
        if on_prompt is not None:
            on_prompt(index)
        runs = sorted((generator.generate([prompt], max_new_tokens, sampling, stop_tokens) for _ in range(repeats)), key=lambda r: r.total_seconds)
        run = runs[len(runs) // 2]
        generated = len(run.tokens[0])
        row = PromptRun(index, len(prompt), run.tokens[0], run.finish[0], run.prefill_seconds * 1e3, run.decode_seconds * 1e3,
                        run.total_seconds * 1e3, generated / run.total_seconds, repeats, run.speculative,
                        [{"index": t.index, "gap": t.gap} for t in run.near_ties[0]])
        if plain is not None:
            row.plain = _compare(plain.generate([prompt], max_new_tokens, sampling, stop_tokens), run)
        rows.append(row)
    return rows, aggregate(rows)


def _compare(plain, run) -> dict:
    from mlpdeploy.runtime.ties import first_difference

    ours, theirs = run.tokens[0], plain.tokens[0]
    index = first_difference(theirs, ours)
    if index is not None and index >= min(len(ours), len(theirs)):
        index = None
    ties = {t.index for t in run.near_ties[0]} | {t.index for t in plain.near_ties[0]}
    return {"same": index is None, "departs_at": index, "near_tie": index in ties if index is not None else None}


def aggregate(rows: list[PromptRun]) -> dict:
    """Totals over a prompt set: tokens/s over all wall time, acceptance over all drafts."""
    tokens = sum(len(r.output_ids) for r in rows)
    seconds = sum(r.wall_ms for r in rows) / 1e3
    result = {"prompts": len(rows), "generated_tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds if seconds else None,
              "prefill_ms_median": statistics.median(r.prefill_ms for r in rows),
              "near_ties": sum(len(r.near_ties) for r in rows)}
    specs = [r.speculative for r in rows if r.speculative]
    if specs:
        drafted, accepted = sum(s["drafted"] for s in specs), sum(s["accepted"] for s in specs)
        rounds = sum(s["rounds"] for s in specs)
        result["speculative"] = {"mode": specs[0]["mode"], "drafted": drafted, "accepted": accepted,
                                 "acceptance": accepted / drafted if drafted else None, "rounds": rounds,
                                 "tokens_per_round": (tokens - len(rows)) / rounds if rounds else None}
    checked = [r.plain for r in rows if r.plain is not None]
    if checked:
        result["same_as_plain"] = sum(c["same"] for c in checked)
        result["departures_without_near_tie"] = sum(1 for c in checked if not c["same"] and not c["near_tie"])
    return result
