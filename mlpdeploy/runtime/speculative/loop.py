"""Speculative decoding: a drafter proposes tokens, one step of the model verifies them all.

Each round, row r feeds its last emitted token and k_r drafts (k_r from `DraftLength`, at most
what the row still needs and the cache still holds) in one step; the model's logits at each
column say whether it agrees. Greedy: the longest prefix of drafts equal to the model's own argmax
is accepted, and the model's token after it is emitted too, so every round emits at least one
token and the output is plain greedy decoding's (up to near-ties, `runtime.ties`). Sampling:
speculative sampling's rule (`runtime.sampling.accept_sampled`), so tokens follow the plain
sampler's distribution. Then the cache is rewound to what each row kept.
"""

from __future__ import annotations

import time

import numpy as np

from mlpdeploy.runtime.generation import Generation
from mlpdeploy.runtime.sampling import Sampling, accept_greedy, accept_sampled
from mlpdeploy.runtime.speculative.base import Drafter, DraftLength, Drafts, Verified, verify_costs
from mlpdeploy.runtime.step import Stepper
from mlpdeploy.runtime.ties import TieRecorder


class Rows:
    """Per-row bookkeeping: tokens emitted, why each row stopped, streaming and near-ties."""

    def __init__(self, batch: int, max_new_tokens: int, stop_tokens, on_token, ties: TieRecorder | None):
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.finish = ["length"] * batch
        self.done = np.zeros(batch, bool)
        self.max_new, self.stops, self.on_token, self.ties = max_new_tokens, set(stop_tokens), on_token, ties

    def remaining(self, row: int) -> int:
        return 0 if self.done[row] else self.max_new - len(self.tokens[row])

    def emit(self, row: int, tokens: list[int], logits: np.ndarray | None) -> list[int]:
        """Emit `tokens` (row `logits[i]` scored token i) until a stop token or the length limit; those emitted."""
        emitted = []
        for i, token in enumerate(tokens):
            if self.ties is not None and logits is not None:
                self.ties.record(row, len(self.tokens[row]), logits[i])
            self.tokens[row].append(token)
            emitted.append(token)
            if self.on_token is not None:
                self.on_token(row, token)
            if token in self.stops:
                self.done[row], self.finish[row] = True, "stop"
            elif len(self.tokens[row]) >= self.max_new:
                self.done[row] = True
            if self.done[row]:
                break
        return emitted


def speculative_generate(stepper: Stepper, drafter: Drafter, prompts, max_new_tokens: int, sampling: Sampling, stop_tokens=(),
                         on_token=None, pad_token: int = 0, tie_margin: float | None = None):
    """Generate with drafts verified by `stepper`'s model (module docstring); a `Generation`
    whose `speculative` field holds the acceptance statistics."""
    rng = np.random.default_rng(sampling.seed)
    batch, longest = len(prompts), max(len(p) for p in prompts)
    slack = 0 if batch == 1 else 2 * (drafter.k_max + 1)  # rows keep different counts: the holes need room
    capacity = min(stepper.layout.max_positions, longest + max_new_tokens + slack)
    policy = DraftLength(drafter.k_max, drafter.draft_cost, fixed=not drafter.adaptive, costs=verify_costs(stepper.engine.path))
    rows = Rows(batch, max_new_tokens, stop_tokens, on_token, TieRecorder(batch, tie_margin) if sampling.greedy and tie_margin else None)
    began = time.perf_counter()
    logits, state = stepper.prefill(prompts, capacity, pad_token)
    run = drafter.start([list(p) for p in prompts], capacity, sampling, rng)
    firsts = sampling.pick(logits, rng)
    result = Generation(rows.tokens, rows.finish, prefill_seconds=time.perf_counter() - began)
    for row, token in enumerate(firsts.tolist()):
        rows.emit(row, [token], logits[row:row + 1])
    run.observe(Verified([[t] for t in firsts.tolist()], [-1] * batch, state.outputs))  # the prefill's last column (it may be its only one)
    pending = firsts.astype(np.int64)
    estimates = policy.start(batch)
    stats = {"rounds": 0, "drafted": 0, "accepted": 0, "rounds_with_drafts": 0, "tokens_per_round": [], "widths": {}}
    while not rows.done.all():
        start = time.perf_counter()
        limits = _limits(policy, estimates, rows, state, batch)
        drafts = run.propose(limits) if any(limits) else Drafts([[] for _ in range(batch)])
        drafts.tokens = [d[:limit] for d, limit in zip(drafts.tokens, limits)]
        width = 1 + max(len(d) for d in drafts.tokens)
        ids = np.full((batch, width), pad_token, np.int64)
        ids[:, 0] = pending
        for row, tokens in enumerate(drafts.tokens):
            ids[row, 1:1 + len(tokens)] = tokens
        before = state.positions.copy()
        logits = stepper.step(state, ids)
        stats["widths"][width] = stats["widths"].get(width, 0) + 1
        emitted, columns, keep = [], [], before.copy()
        for row in range(batch):
            if rows.done[row]:
                emitted.append([])
                columns.append(0)
                continue
            tokens = drafts.tokens[row]
            if sampling.greedy:
                accepted, token = accept_greedy(logits[row], tokens)
            else:
                q = drafts.probs[row] if drafts.probs is not None else None
                accepted, token = accept_sampled(sampling.probs(logits[row, :len(tokens) + 1]), tokens, q, rng)
            keep[row] += accepted + 1
            emitted.append(rows.emit(row, tokens[:accepted] + [token], logits[row]))
            columns.append(accepted)
            policy.update(estimates[row], len(tokens), accepted)
            stats["drafted"] += len(tokens)
            stats["accepted"] += accepted
            stats["rounds_with_drafts"] += bool(tokens)
            pending[row] = token
        stepper.rewind(state, keep)
        run.observe(Verified(emitted, columns, state.outputs))
        stats["rounds"] += 1
        stats["tokens_per_round"].append(sum(len(e) for e in emitted))
        result.step_seconds.append(time.perf_counter() - start)
    result.total_seconds = time.perf_counter() - began
    result.near_ties = rows.ties.ties if rows.ties is not None else [[] for _ in range(batch)]
    result.speculative = _summary(drafter, stats)
    return result


def _limits(policy: DraftLength, estimates: np.ndarray, rows: Rows, state, batch: int) -> list[int]:
    """Drafts each row may propose: the policy's k, at most what the row still needs after the
    model's own token, and what the cache holds. With several rows, a round may leave holes (rows
    keeping fewer tokens than the widest), so the step leaves room for every row to finish one
    token per step afterwards: k ≤ capacity − length − (the most tokens a row still needs)."""
    remaining = [rows.remaining(r) for r in range(batch)]
    room = state.capacity - state.length - 1
    if batch > 1:
        room = state.capacity - state.length - max(remaining)
    limits = []
    for row in range(batch):
        if rows.done[row]:
            limits.append(0)
            continue
        limits.append(max(0, min(policy.choose(estimates[row]), remaining[row] - 1, room)))
    return limits


def _summary(drafter: Drafter, stats: dict) -> dict:
    per_round = stats.pop("tokens_per_round")
    drafted = stats["drafted"]
    stats["widths"] = dict(sorted(stats["widths"].items()))  # verify steps per width (1: a plain step)
    return {"mode": drafter.describe(), **stats, "acceptance": stats["accepted"] / drafted if drafted else None,
            "tokens_per_round": float(np.mean(per_round)) if per_round else None}
