"""`--draft-heads N[:key=value,...]`: train N Medusa-style draft heads for `--speculative heads`.

The heads (`mlpdeploy.model.draft_heads`: one residual SiLU block each on the last hidden state,
sharing a slice of the model's own lm_head) learn the model's own greedy outputs
(`draft_data`: prompts built from the calibration split of `--data`, generated once by the torch
model, the backbone frozen) and are judged on prompts from the held-out split: per head top-1 /
top-5 accuracy and the share of positions where heads 0…j all guess right (what drafting j + 1
tokens accepts). The plan gets a `draft-heads` pass and the heads' file beside it
(`plan.draft-heads.safetensors`); `compile --plan` builds them into the graph as outputs
`draft_logits.{j}`.

Options after the count (defaults in `SETTINGS`, chosen by measurement: docs/decoding.md):
`vocab` (slice size: the V most frequent tokens of the rollouts and the text; 0 = the whole
vocabulary), `style` (chat | text | mix prompts, `draft_data.PROMPT_STYLES`), `prompts` (training
prompts), `eval` (held-out prompts), `new` (tokens generated per prompt), `passage` (tokens of
text per prompt), `epochs`, `loss` (soft | hard), `lr`, `batch` (rollouts generated at once),
`threads` (torch threads; 0: torch's own, which OMP_NUM_THREADS sets — one for small models).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from mlpdeploy.analyze.base import Analysis, AnalysisContext, AnalysisResult, Table
from mlpdeploy.analyze.draft_data import PROMPT_STYLES, Rollouts, chat_prompt_ids, greedy_rollouts, passage_prompts
from mlpdeploy.analyze.draft_train import LOSSES, TrainSettings, choose_slice, head_accuracy, train_heads
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.draft_heads import DraftHeads, find_lm_head, lm_rows, rows_sha256
from mlpdeploy.model.kv_cache import is_cached_decoder
from mlpdeploy.model.tokenize import ChatEncoder, chat_encoder

MAX_HEADS = 16
SETTINGS = {"vocab": 4096, "style": "chat", "prompts": 128, "eval": 16, "new": 128, "passage": 128, "epochs": 4, "loss": "soft",
            "lr": 2e-3, "batch": 16, "threads": 0}
SMALL = 256  # hidden sizes below this run on one thread: OpenMP's barriers cost more than a second thread gains
TOP = 5


def parse_value(value: str | None) -> tuple[int, dict]:
    """`N[:key=value,...]` → (N, settings), with one-line errors."""
    text = (value or "").strip()
    count, _, rest = text.partition(":")
    try:
        heads = int(count)
    except ValueError:
        raise MlpdeployError(f"--draft-heads {text!r}: give the number of heads, e.g. --draft-heads 4") from None
    if not 1 <= heads <= MAX_HEADS:
        raise MlpdeployError(f"--draft-heads {heads}: the number of heads must be 1 to {MAX_HEADS}")
    settings = dict(SETTINGS)
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = item.partition("=")
        if not eq or key not in SETTINGS:
            raise MlpdeployError(f"--draft-heads {text!r}: {item!r} is not an option; options are {', '.join(k + '=' for k in SETTINGS)}")
        kind = type(SETTINGS[key])
        try:
            settings[key] = kind(raw)
        except ValueError:
            raise MlpdeployError(f"--draft-heads {text!r}: {key}={raw!r} is not a valid {kind.__name__}") from None
        if kind in (int, float) and settings[key] < (0 if key in ("vocab", "threads") else 1e-9):
            raise MlpdeployError(f"--draft-heads {text!r}: {key} must be positive")
    if settings["style"] not in PROMPT_STYLES or settings["loss"] not in LOSSES:
        raise MlpdeployError(f"--draft-heads {text!r}: style is one of {', '.join(PROMPT_STYLES)}, loss one of {', '.join(LOSSES)}")
    return heads, settings


class DraftHeadsAnalysis(Analysis):
    name = "draft-heads"
    takes = "N"
    description = ("train N Medusa draft heads on the model's own greedy answers to prompts from --data (backbone frozen); "
                   "compile --plan builds them in for --speculative heads")

    def run(self, ctx: AnalysisContext) -> AnalysisResult:
        heads_count, settings = parse_value(self.value)
        threads = torch.get_num_threads()
        try:
            return self._run(ctx, heads_count, settings)
        finally:
            torch.set_num_threads(threads)

    def _run(self, ctx: AnalysisContext, heads_count: int, settings: dict) -> AnalysisResult:
        bundle = ctx.bundle
        module = bundle.module
        decoder = getattr(module, "decoder", module)  # a --kv-cache bundle wraps the decoder
        if not is_cached_decoder(decoder):
            raise MlpdeployError(f"{bundle.source} is not a causal LM mlpdeploy can generate with (no cache_layout/forward_cached); "
                                 "draft heads need a zoo decoder or a Hugging Face causal LM")
        vocab = next((int(s.high) for s in bundle.inputs if s.name == "input_ids" and s.high is not None), None)
        lm_path, lm_head = find_lm_head(decoder, vocab)
        task = bundle.task
        if task is None or not hasattr(task, "calibration_tokens") or getattr(task, "kind", "") != "lm":
            raise MlpdeployError(f"--draft-heads trains on text: give {bundle.source} --data FILE (.txt/.md/.jsonl, docs/data.md)")
        if settings["threads"] or lm_head.in_features < SMALL:
            torch.set_num_threads(settings["threads"] or 1)
        start = time.perf_counter()
        rng = np.random.default_rng(ctx.seed)
        style, chat = _style(bundle, settings["style"])
        train = _rollouts(decoder, lm_head, task.calibration_tokens, settings["prompts"], settings, style, chat, rng)
        held_out = _rollouts(decoder, lm_head, task.eval_tokens, settings["eval"], settings, style, chat, np.random.default_rng(ctx.seed + 1))
        generated = time.perf_counter() - start
        counts = np.bincount(train.tokens.numpy(), minlength=vocab) * len(task.calibration_tokens) + np.bincount(task.calibration_tokens, minlength=vocab)
        token_ids = choose_slice(counts[:vocab], vocab, settings["vocab"] or None)
        rows = lm_rows(lm_head, token_ids)
        torch.manual_seed(ctx.seed)
        heads = DraftHeads(heads_count, torch.from_numpy(rows), token_ids)
        untrained = head_accuracy(heads, held_out, vocab, TOP)  # every head repeats the lm_head's own guess
        stats = train_heads(heads, train, vocab, TrainSettings(heads_count, epochs=settings["epochs"], lr=settings["lr"], loss=settings["loss"],
                                                              seed=ctx.seed))
        accuracy = head_accuracy(heads, held_out, vocab, TOP)
        data = {"heads": heads_count, "hidden": heads.hidden, "vocab": vocab, "slice": int(len(token_ids)), "lm_head": lm_path,
                "settings": settings, "prompt_style": style,
                "rollouts": {"train": _describe(train), "held_out": _describe(held_out), "seconds": round(generated, 1)},
                "training": stats, "held_out": accuracy,
                "untrained": {k: untrained.get(k) for k in ("top1", "accepted")}}
        return AnalysisResult(data=data, table=_table(accuracy, heads_count), passes=[{"name": "draft-heads", "options": {}}],
                              arrays=heads.to_file(rows_sha256(rows)).arrays())


def _style(bundle, style: str) -> tuple[str, ChatEncoder | None]:
    """The prompt style to use and the chat encoder (None without a chat template: text only)."""
    chat = chat_encoder(bundle)
    if chat is None and style != "text":
        style = "text"  # a model without a chat template (the zoo's byte models) is served without one
    return style, chat


def _rollouts(decoder, lm_head, stream: np.ndarray, count: int, settings: dict, style: str, chat: ChatEncoder | None, rng) -> Rollouts:
    passages = passage_prompts(stream, count, settings["passage"], rng)
    prompts = []
    for i, passage in enumerate(passages):
        as_chat = chat is not None and (style == "chat" or (style == "mix" and i % 2 == 0))
        prompts.append(chat_prompt_ids([passage], chat.decode, chat.encode, rng)[0] if as_chat else [int(t) for t in passage])
    return greedy_rollouts(decoder, lm_head, prompts, settings["new"], chat.stop_ids if chat else (), batch=settings["batch"],
                           pad=chat.pad if chat else 0)


def _describe(rollouts: Rollouts) -> dict:
    return {"prompts": int(rollouts.rows.max()) + 1 if len(rollouts.rows) else 0, "positions": int(len(rollouts.tokens)),
            "prompt_tokens": rollouts.prompt_tokens}


def _table(accuracy: dict, heads: int) -> Table:
    rows = [[j, accuracy["top1"][j], accuracy[f"top{TOP}"][j], accuracy["accepted"][j], accuracy["in_slice"][j]]
            for j in range(heads)] if accuracy.get("positions") else []
    return Table(f"draft heads on held-out rollouts ({accuracy.get('positions', 0)} positions): head j guesses the token j + 2 ahead",
                 ["head", "top-1", f"top-{TOP}", "heads 0..j all right", "target in slice"], rows)
