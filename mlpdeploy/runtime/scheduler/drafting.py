"""Speculative rounds inside the scheduler, for a sequence that is the whole batch.

When one sequence runs alone (nothing else active, prefilling or waiting), the scheduler verifies
drafts for it as the solo speculative loop does (`runtime.speculative.loop`): the row feeds its
pending token and k drafts in one step, keeps the longest agreeing prefix and the model's token
after it, and the row's length is rewound to what it kept. Under load every step is a plain
decode step — a verify step for b rows runs b·(k+1) tokens, and a batched step already spends the
weight reads that drafting saves (measured: docs/serving.md). The draft run starts from the row's
whole history the first time it runs alone (so its first round drafts what that drafter can
from the history alone — n-gram lookups at once, heads and draft models from the round after),
and is dropped as soon as another sequence joins.
"""

from __future__ import annotations

import numpy as np

from mlpdeploy.runtime.sampling import accept_greedy, accept_sampled
from mlpdeploy.runtime.scheduler.request import Request
from mlpdeploy.runtime.speculative.base import Drafter, DraftLength, Drafts, Verified, verify_costs
from mlpdeploy.runtime.step import Stepper


class SoloDrafting:
    """The draft run of the batch's only sequence, and the acceptance statistics."""

    def __init__(self, stepper: Stepper, drafter: Drafter, columns: int):
        self.stepper, self.drafter, self.columns = stepper, drafter, columns
        self.policy = DraftLength(drafter.k_max, drafter.draft_cost, fixed=not drafter.adaptive,
                                  costs=verify_costs(stepper.engine.path))
        self.request: Request | None = None
        self.run = None
        self.estimate: np.ndarray | None = None
        self.stats = {"rounds": 0, "drafted": 0, "accepted": 0}

    def reset(self) -> None:
        self.request = self.run = self.estimate = None

    def round(self, slots) -> bool:
        """One verify round for active row 0; True when its request finished."""
        request, state = slots.requests[0], slots.state()
        if self.request is not request:
            history = request.prompt + request.tokens
            self.run = self.drafter.start([history], self.columns, request.sampling, request.rng)
            self.request, self.estimate = request, self.policy.start(1)[0]
        before = int(state.positions[0])
        remaining = request.max_tokens - len(request.tokens)
        k = max(0, min(self.policy.choose(self.estimate), remaining - 1, state.capacity - before - 1))
        drafts = self.run.propose([k]) if k else Drafts([[]])
        tokens = drafts.tokens[0][:k]
        logits = self.stepper.step(state, np.array([[slots.pending[0], *tokens]], np.int64))[0]
        if request.sampling.greedy:
            accepted, token = accept_greedy(logits, tokens)
        else:
            q = drafts.probs[0] if drafts.probs is not None else None
            accepted, token = accept_sampled(request.sampling.probs(logits[:len(tokens) + 1]), tokens, q, request.rng)
        emitted = []
        for i, chosen in enumerate(tokens[:accepted] + [token]):
            if request.sampling.greedy:
                request.record_tie(logits[i])
            emitted.append(chosen)
            if request.emit(chosen):
                break
        self.stepper.rewind(state, [before + accepted + 1])
        slots.pending[0] = token
        self.policy.update(self.estimate, len(tokens), accepted)
        self.run.observe(Verified([emitted], [accepted], state.outputs))
        self.stats["rounds"] += 1
        self.stats["drafted"] += len(tokens)
        self.stats["accepted"] += accepted
        return request.finish is not None
