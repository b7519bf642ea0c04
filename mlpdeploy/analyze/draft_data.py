"""What draft heads learn from: the model's own greedy outputs on prompts made from the user's text.

Self-distillation: each prompt is generated greedily by the torch model (its KV cache through the
cached-decoder contract, `mlpdeploy.model.kv_cache`), and every position whose logits picked a
token is kept with the lm_head's input there (`Rollouts`): head j at position n learns the token
picked j + 1 positions later, which is what the model itself generates, so drafts are accepted
as often as the heads can guess it. The backbone is run once; training reads these arrays.

Prompts come from a split's token stream (calibration for training, held-out for the heads'
accuracy), in one of two styles (`PROMPT_STYLES`):

* `chat` — a passage of the text inside an instruction (summarize, copy, quote, explain, list,
  ask about it, continue it), through the tokenizer's chat template as `generate` applies it:
  the answers are what serving produces;
* `text` — a window of the text itself, continued.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mlpdeploy.errors import MlpdeployError

PROMPT_STYLES = ("chat", "text", "mix")
# Instructions around a passage ({p}); none is a bench prompt (bench/prompts/ are never trained on).
TEMPLATES = (
    "Summarize the following text in a few sentences:\n\n{p}",
    "Copy this passage exactly as it is written:\n\n{p}",
    "What is the main idea of this passage?\n\n{p}",
    "Rewrite the following paragraph in simpler words:\n\n{p}",
    "List the key points of this text as bullet points:\n\n{p}",
    "Explain the following to someone who is new to the topic:\n\n{p}",
    "Read this passage and write one question it answers, then answer it:\n\n{p}",
    "Continue this text with a few more sentences:\n\n{p}",
    "{p}\n\nWhat does the text above say? Answer briefly.",
    "Quote the most important sentence of this passage, word for word:\n\n{p}",
)


@dataclass
class Rollouts:
    """Positions of greedy rollouts: at each, the lm_head's input and the token its logits picked.
    A rollout's positions are consecutive (its first is the prompt's last position)."""

    hidden: torch.Tensor  # [N, d] float32
    tokens: torch.Tensor  # [N] int64
    rows: torch.Tensor  # [N] int64, the rollout each position belongs to
    prompt_tokens: int = 0

    def targets(self, heads: int) -> torch.Tensor:
        """[N, heads]: head j's target at position n, the token picked at n + j + 1 (−1 past the rollout's end)."""
        n = len(self.tokens)
        out = torch.full((n, heads), -1, dtype=torch.int64)
        for j in range(heads):
            shift = j + 1
            if shift < n:
                same = self.rows[shift:] == self.rows[:-shift]
                out[:-shift, j] = torch.where(same, self.tokens[shift:], torch.full_like(self.tokens[shift:], -1))
        return out

    def source(self, heads: int) -> torch.Tensor:
        """[N, heads]: the position whose logits picked head j's target (−1 where there is none)."""
        index = torch.arange(len(self.tokens))[:, None] + torch.arange(1, heads + 1)[None, :]
        return torch.where(self.targets(heads) >= 0, index, torch.full_like(index, -1))


def passage_prompts(stream: np.ndarray, count: int, length: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`count` windows of `length` tokens of `stream` at seeded random offsets."""
    if len(stream) < length + 1:
        raise MlpdeployError(f"the text holds {len(stream)} tokens, too few for a {length}-token passage; give more text")
    starts = rng.integers(0, len(stream) - length, size=count)
    return [stream[s:s + length] for s in starts]


def chat_prompt_ids(passages: list[np.ndarray], decode: Callable[[list[int]], str], encode_chat: Callable[[str], list[int]],
                    rng: np.random.Generator) -> list[list[int]]:
    """Each passage (decoded, trimmed to whole lines or words) inside an instruction, chat-templated."""
    prompts = []
    for passage in passages:
        text = _trim(decode([int(t) for t in passage]))
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        prompts.append(encode_chat(template.format(p=text)))
    return prompts


def _trim(text: str) -> str:
    """A decoded window without its cut-off first and last words (whole lines where there are some)."""
    text = text.strip()
    lines = text.split("\n")
    if len(lines) > 2:
        return "\n".join(lines[1:-1]).strip() or text
    words = text.split(" ")
    return " ".join(words[1:-1]).strip() if len(words) > 2 else text


@torch.no_grad()
def greedy_rollouts(module: torch.nn.Module, lm_head: torch.nn.Module, prompts: list[list[int]], max_new: int,
                    stop_ids: tuple[int, ...] = (), batch: int = 16, pad: int = 0,
                    on_batch: Callable[[int, int], None] | None = None) -> Rollouts:
    """Generate every prompt greedily (`max_new` tokens at most, ending at a stop token) with the
    cached decoder `module`; keep each picking position's lm_head input (`lm_head` is the model's).
    Prompts run in batches of `batch`, longest first, left-padded."""
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    hidden, tokens, rows = [None] * len(prompts), [None] * len(prompts), []
    captured: list[torch.Tensor] = []

    def last_position(_module, inputs):  # the lm_head scores only the last position (a prefill's others are unused)
        captured.append(inputs[0][:, -1])
        return (inputs[0][:, -1:], *inputs[1:])

    handle = lm_head.register_forward_pre_hook(last_position)
    try:
        for start in range(0, len(order), batch):
            chunk = order[start:start + batch]
            found = _generate(module, [prompts[i] for i in chunk], max_new, stop_ids, pad, captured)
            for i, (h, t) in zip(chunk, found):
                hidden[i], tokens[i] = h, t
            if on_batch is not None:
                on_batch(min(start + batch, len(order)), len(order))
    finally:
        handle.remove()
    for i, t in enumerate(tokens):
        rows.append(torch.full((len(t),), i, dtype=torch.int64))
    return Rollouts(torch.cat(hidden).float(), torch.cat(tokens), torch.cat(rows), sum(len(p) for p in prompts))


def _generate(module, prompts: list[list[int]], max_new: int, stop_ids: tuple[int, ...], pad: int,
              captured: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layout = module.cache_layout()
    batch, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((batch, width), pad, dtype=torch.int64)
    mask = torch.zeros((batch, width), dtype=torch.int64)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.as_tensor(p, dtype=torch.int64)
        mask[r, width - len(p):] = 1
    dtype = getattr(torch, layout.dtype)
    past = [(torch.zeros(batch, layout.kv_heads, 0, layout.head_dim, dtype=dtype),) * 2 for _ in layout.layers]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    done = torch.zeros(batch, dtype=torch.bool)
    picked, states = [], []
    for _ in range(max_new):
        captured.clear()
        logits, past = module.forward_cached(ids, mask, positions, past)
        if len(captured) != 1:
            raise MlpdeployError(f"the model ran its lm_head {len(captured)} times in one step; draft heads need exactly one")
        token = logits[:, -1].argmax(-1)
        picked.append(torch.where(done, -1, token))
        states.append(captured[0].float())
        done |= torch.isin(token, torch.as_tensor(stop_ids, dtype=torch.int64)) if stop_ids else torch.zeros_like(done)
        if bool(done.all()):
            break
        ids = token[:, None]
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=torch.int64)], dim=1)
    tokens, hidden = torch.stack(picked, 1), torch.stack(states, 1)
    out = []
    for r in range(batch):
        keep = tokens[r] >= 0
        out.append((hidden[r][keep], tokens[r][keep]))
    return out
