"""Training draft heads on greedy rollouts (`draft_data.Rollouts`), the backbone frozen.

Only the heads' residual blocks learn (`DraftHeads.proj`); the lm_head slice is the model's own.
The loss of head j at a position is the cross-entropy against the model's own distribution for
its target over the slice (`soft`, self-distillation: the teacher's logits are the lm_head's at
the position that picked the target), or against the picked token alone (`hard`), weighted by
`decay`^j (Medusa's weighting: later heads are harder and matter less). AdamW, a cosine schedule
with warm-up, minibatches drawn by a seeded generator: the same seed gives the same bytes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from mlpdeploy.analyze.draft_data import Rollouts
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.draft_heads import DraftHeads

LOSSES = ("soft", "hard")


@dataclass
class TrainSettings:
    heads: int
    epochs: int = 4
    batch: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.0
    decay: float = 0.8
    loss: str = "soft"
    seed: int = 0


def choose_slice(counts: np.ndarray, vocab: int, size: int | None) -> np.ndarray:
    """The `size` token ids scored most often by `counts` [vocab] (ties: the lower id, which in a
    BPE vocabulary is the more frequent merge), sorted; every id when `size` is None or ≥ vocab."""
    if size is None or size >= vocab:
        return np.arange(vocab, dtype=np.int64)
    order = np.lexsort((np.arange(vocab), -counts.astype(np.int64)))
    return np.sort(order[:size]).astype(np.int64)


def slice_index(token_ids: np.ndarray, vocab: int) -> torch.Tensor:
    """[vocab] → position of each token in the slice, −1 where it is not in it."""
    index = torch.full((vocab,), -1, dtype=torch.int64)
    index[torch.as_tensor(token_ids)] = torch.arange(len(token_ids))
    return index


def train_heads(heads: DraftHeads, rollouts: Rollouts, vocab: int, settings: TrainSettings) -> dict:
    """Train `heads.proj` in place on `rollouts`; returns the training statistics."""
    if settings.loss not in LOSSES:
        raise MlpdeployError(f"--draft-heads loss={settings.loss!r}; choose {' or '.join(LOSSES)}")
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(settings.seed)
    index = slice_index(heads.token_ids.numpy(), vocab)
    targets = rollouts.targets(settings.heads)
    sources = rollouts.source(settings.heads)
    labels = torch.where(targets >= 0, index[targets.clamp(min=0)], torch.full_like(targets, -1))
    usable = (targets >= 0).any(1).nonzero().squeeze(1)
    if len(usable) == 0:
        raise MlpdeployError("the rollouts are too short to train draft heads (no position has a token after the next); give more text")
    weights = torch.tensor([settings.decay ** j for j in range(settings.heads)])
    steps = settings.epochs * math.ceil(len(usable) / settings.batch)
    optimizer = torch.optim.AdamW([heads.proj.weight, heads.proj.bias], lr=settings.lr, weight_decay=settings.weight_decay)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    heads.train()
    losses = []
    for _ in range(settings.epochs):
        order = usable[torch.randperm(len(usable), generator=generator)]
        for i in range(0, len(order), settings.batch):
            batch = order[i:i + settings.batch]
            logits = heads(rollouts.hidden[batch])  # [B, H, V']
            loss = _loss(heads, logits, labels[batch], sources[batch], rollouts.hidden, weights, settings.loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
    heads.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"positions": int(len(usable)), "steps": len(losses), "epochs": settings.epochs, "batch": settings.batch, "lr": settings.lr,
            "loss": settings.loss, "decay": settings.decay, "seed": settings.seed, "final_loss": round(float(np.mean(tail)), 4),
            "seconds": round(time.perf_counter() - start, 1)}


def _loss(heads: DraftHeads, logits: torch.Tensor, labels: torch.Tensor, sources: torch.Tensor, hidden: torch.Tensor,
          weights: torch.Tensor, kind: str) -> torch.Tensor:
    logp = torch.log_softmax(logits, -1)
    if kind == "hard":
        valid = labels >= 0
        picked = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
        per = -(picked * valid).sum(0) / valid.sum(0).clamp(min=1)
    else:
        valid = sources >= 0
        with torch.no_grad():
            teacher = torch.softmax(heads.lm_head(hidden[sources.clamp(min=0)]), -1)  # [B, H, V'] the model's own, on the slice
        per = -((teacher * logp).sum(-1) * valid).sum(0) / valid.sum(0).clamp(min=1)
    return (per * weights).sum() / weights.sum()


@torch.no_grad()
def head_accuracy(heads: DraftHeads, rollouts: Rollouts, vocab: int, top: int = 5, batch: int = 1024) -> dict:
    """Per head on `rollouts` (held-out): top-1 and top-`top` accuracy against the model's own
    greedy token, and `accepted`: the share of positions where heads 0…j all guess right (what
    drafting j + 1 tokens accepts); `mean_accepted(k)` tokens per k-draft follow from it."""
    count = heads.heads
    index = slice_index(heads.token_ids.numpy(), vocab)
    targets = rollouts.targets(count)
    labels = torch.where(targets >= 0, index[targets.clamp(min=0)], torch.full_like(targets, -1))
    # positions where every head has a target, so each head is judged on the same positions
    full = (targets >= 0).all(1).nonzero().squeeze(1)
    if len(full) == 0:
        return {"positions": 0}
    hits1, hitsk = [], []
    for i in range(0, len(full), batch):
        rows = full[i:i + batch]
        logits = heads(rollouts.hidden[rows])
        lab = labels[rows]
        topk = logits.topk(min(top, logits.shape[-1]), -1).indices
        hits1.append(topk[..., 0] == lab)
        hitsk.append((topk == lab[..., None]).any(-1))
    h1, hk = torch.cat(hits1).float(), torch.cat(hitsk).float()
    chain = torch.cumprod(h1, 1).mean(0)
    in_slice = (labels[full] >= 0).float().mean(0)
    return {"positions": int(len(full)), "top1": _r(h1.mean(0)), f"top{top}": _r(hk.mean(0)), "accepted": _r(chain),
            "in_slice": _r(in_slice), "mean_accepted": [round(float(chain[:k].sum()), 4) for k in range(1, count + 1)]}


def _r(t: torch.Tensor) -> list[float]:
    return [round(float(v), 4) for v in t]
