"""Choosing tokens from logits: greedy or sampled (`Sampling`), and speculative sampling's rule
for accepting drafted tokens so that the output follows exactly the distribution `Sampling`
samples from (Leviathan et al. 2023, Chen et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlpdeploy.errors import MlpdeployError


@dataclass
class Sampling:
    """Greedy when `temperature` is 0; else softmax(logits / temperature) restricted to the
    `top_k` most likely tokens (0: all) and the smallest set whose probability reaches `top_p`."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise MlpdeployError(
                f"sampling needs temperature >= 0, top_k >= 0 and 0 < top_p <= 1; got {self.temperature}, {self.top_k}, {self.top_p}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """The distribution tokens are sampled from, per row of `logits` [..., vocab] (float64)."""
        scaled = np.asarray(logits, np.float64) / self.temperature
        if self.top_k:
            kth = np.sort(scaled, axis=-1)[..., -min(self.top_k, scaled.shape[-1])][..., None]
            scaled = np.where(scaled < kth, -np.inf, scaled)
        probs = np.exp(scaled - scaled.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        if self.top_p < 1:
            order = np.argsort(-probs, axis=-1)
            sorted_probs = np.take_along_axis(probs, order, -1)
            keep_sorted = np.cumsum(sorted_probs, -1) - sorted_probs < self.top_p  # always keeps the first
            keep = np.zeros_like(keep_sorted)
            np.put_along_axis(keep, order, keep_sorted, -1)
            probs = np.where(keep, probs, 0.0)
            probs /= probs.sum(-1, keepdims=True)
        return probs

    def pick(self, logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One token per row of `logits` [batch, vocab]."""
        if self.greedy:
            return logits.argmax(-1)
        return np.array([draw(p, rng) for p in self.probs(logits)])


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token from a distribution (float64, sums to 1)."""
    return int(rng.choice(len(probs), p=probs))


def accept_greedy(logits: np.ndarray, drafts: list[int]) -> tuple[int, int]:
    """(drafts accepted, the model's next token): the longest prefix of `drafts` the model's own
    argmax agrees with. `logits` [len(drafts) + 1, vocab]: row i scores the token after draft i-1."""
    targets = logits[: len(drafts) + 1].argmax(-1)
    accepted = 0
    while accepted < len(drafts) and targets[accepted] == drafts[accepted]:
        accepted += 1
    return accepted, int(targets[accepted])


def accept_sampled(p: np.ndarray, drafts: list[int], q: np.ndarray | None, rng: np.random.Generator) -> tuple[int, int]:
    """(drafts accepted, the next token) by speculative sampling's rule: draft i is kept with
    probability min(1, p_i(d)/q_i(d)); the first rejected one is replaced by a draw from
    norm(max(0, p_i − q_i)); when all are kept, the next token is drawn from p_k. `p` [k+1, vocab]
    are the model's distributions, `q` [k, vocab] the drafter's (None: drafts chosen
    deterministically, q a point mass). The tokens emitted follow p exactly, whatever q is."""
    for i, token in enumerate(drafts):
        q_token = 1.0 if q is None else q[i, token]
        if q_token > 0 and rng.random() * q_token < p[i, token]:
            continue
        residual = p[i] - (_point(token, p.shape[-1]) if q is None else q[i])
        residual = np.maximum(residual, 0.0)
        total = residual.sum()
        # total == 0 only when p == q (then nothing is ever rejected); kept for float safety
        return i, draw(residual / total, rng) if total > 0 else draw(p[i], rng)
    return len(drafts), draw(p[len(drafts)], rng)


def _point(token: int, vocab: int) -> np.ndarray:
    one = np.zeros(vocab)
    one[token] = 1.0
    return one
