"""A smaller model as the drafter: `draft:ARTIFACT` (another `--kv-cache` build with the same
tokenizer) and `self:PLAN` (the model itself minus the layers a drop-layers plan removes).

The drafter keeps its own cache through the same step function. A round feeds it what the model
emitted since it last drafted (one step, rows right-aligned), then drafts one token per step;
after the verify step its cache is rewound to the drafts the model accepted, and what it has not
seen yet (the model's own token, or the last draft and the model's token when all were accepted)
waits for the next round. A round the loop does not draft in (low acceptance) costs it nothing:
its tokens wait too.
"""

from __future__ import annotations

import numpy as np

from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.sampling import draw
from mlpdeploy.runtime.speculative.base import Drafter, DraftRun, Drafts, Verified
from mlpdeploy.runtime.step import Stepper


class ModelDrafter(Drafter):
    """Drafts with `engine` (its own cache). `draft_cost`: a draft step's cost relative to one of
    the model's; by default the ratio of the two artifacts' bytes (decoding is bound by reading
    the weights)."""

    def __init__(self, engine: Engine, name: str, k: int = 4, draft_cost: float | None = None, target: Engine | None = None):
        self.stepper, self.name, self.k_max = Stepper(engine), name, k
        if draft_cost is None and target is not None:
            from mlpdeploy.runtime.latency import model_bytes

            draft_cost = model_bytes(engine.path) / model_bytes(target.path)
        self.draft_cost = draft_cost if draft_cost is not None else 0.5

    def describe(self) -> str:
        return f"{self.name}:k={self.k_max}"

    def start(self, prompts, capacity, sampling, rng) -> "ModelRun":
        room = min(self.stepper.layout.max_positions, capacity + self.k_max + 1)
        _, state = self.stepper.prefill(prompts, room)
        return ModelRun(self.stepper, state, len(prompts), sampling, rng)


class ModelRun(DraftRun):
    def __init__(self, stepper: Stepper, state, batch: int, sampling, rng):
        self.stepper, self.state, self.sampling, self.rng = stepper, state, sampling, rng
        self.pending: list[list[int]] = [[] for _ in range(batch)]  # emitted, not yet fed to the drafter
        self.fed = 0  # drafts fed to the drafter in the last round (its last draft never is)
        self.base: np.ndarray | None = None  # each row's token count before those drafts

    def propose(self, limits: list[int]) -> Drafts:
        k, batch = max(limits), len(limits)
        width = max(len(p) for p in self.pending)
        if self.state.length + width + k - 1 > self.state.capacity or width == 0:
            self.fed = 0  # no room left in the drafter's cache: the rest is plain decoding
            return Drafts([[] for _ in limits])
        ids = np.zeros((batch, width), np.int64)
        valid = np.zeros((batch, width), bool)
        for row, tokens in enumerate(self.pending):  # right-aligned: every row's last column is its last token
            if tokens:
                ids[row, width - len(tokens):], valid[row, width - len(tokens):] = tokens, True
        logits = self.stepper.step(self.state, ids, None if valid.all() else valid, last_only=True)[:, -1]
        self.pending = [[] for _ in range(batch)]
        self.base = self.state.positions.copy()
        tokens = [[] for _ in range(batch)]
        probs = [[] for _ in range(batch)] if not self.sampling.greedy else None
        for i in range(k):
            chosen = self._choose(logits, probs)
            for row in range(batch):
                tokens[row].append(int(chosen[row]))
            if i < k - 1:
                logits = self.stepper.step(self.state, chosen[:, None].astype(np.int64))[:, -1]
        self.fed = k - 1
        stacked = [np.stack(p[:limit]) if limit else None for p, limit in zip(probs, limits)] if probs is not None else None
        return Drafts([t[:limit] for t, limit in zip(tokens, limits)], stacked)

    def _choose(self, logits: np.ndarray, probs: list | None) -> np.ndarray:
        if probs is None:
            return logits.argmax(-1)
        q = self.sampling.probs(logits)
        for row in range(len(q)):
            probs[row].append(q[row])
        return np.array([draw(p, self.rng) for p in q])

    def observe(self, verified: Verified) -> None:
        if self.base is None:  # the prefill's first tokens, or a round without drafts
            for row, tokens in enumerate(verified.emitted):
                self.pending[row].extend(tokens)
            return
        keep = self.base.copy()
        for row, tokens in enumerate(verified.emitted):
            kept = min(max(len(tokens) - 1, 0), self.fed)  # drafts accepted that the drafter has fed
            keep[row] += kept
            self.pending[row] = list(tokens[kept:])
        self.stepper.rewind(self.state, keep)
        self.base, self.fed = None, 0
