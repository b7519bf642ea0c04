"""The drafter interface, and how many tokens a row drafts in a round (adaptive k).

A `Drafter` is built once per served model (it may hold its own engine) and is shared by every
generation; `start` gives one generation's `DraftRun`, which keeps the per-row state (token
history, the drafter's own cache). Each round the loop asks the run for drafts (`propose`, at
most `limits[r]` tokens for row r), verifies them in one step of the model, and tells the run
what each row emitted (`observe`): the accepted drafts and the model's own next token, and the
column of the step's outputs that scored that last token (where draft heads read their guesses).
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Cost of one session run over s tokens of one sequence relative to a one-token step: SmolLM2-135M
# int4 at past 128, 2 threads (measured on a 2-core x86 CPU). A verify step of k drafts runs s = k + 1 tokens.
VERIFY_COST = ((1, 1.0), (2, 1.43), (4, 1.87), (8, 2.56), (16, 4.0))
# The same for an `--ort-kernels` build, whose int4 linears run mlpdeploy's MatMulInt4 (codes unpacked
# once for up to 8 rows; MatMulInt8 for 8-bit ones): bench/verify_cost.py, the mean of two runs' milliseconds
# (the one-token step is the one the kernel shortens most, so these ratios are not much below VERIFY_COST's).
VERIFY_COST_NBITS_KERNELS = ((1, 1.0), (2, 1.28), (4, 1.64), (8, 2.65), (16, 4.73))


@dataclass
class Drafts:
    """Per row, the drafted tokens, and the drafter's distributions they were drawn from
    ([len, vocab] each, sampling with a model drafter) or None (chosen deterministically)."""

    tokens: list[list[int]]
    probs: list[np.ndarray | None] | None = None


@dataclass
class Verified:
    """What a step decided per row: `emitted` the accepted drafts then the model's own token
    (empty for a row already finished), `column` the column of the step's outputs whose logits
    gave that last token, `outputs` the step's extra outputs (e.g. draft heads) [batch, s, ...]."""

    emitted: list[list[int]]
    column: list[int]
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


class DraftRun(ABC):
    """One generation's drafting state, per row."""

    @abstractmethod
    def propose(self, limits: list[int]) -> Drafts:
        """Up to `limits[r]` draft tokens for row r (0: none), continuing its last emitted token."""

    @abstractmethod
    def observe(self, verified: Verified) -> None:
        """What each row emitted in the last step (the prefill's first token, then each round's)."""


class Drafter(ABC):
    """A way to propose tokens (module docstring). `draft_cost` is one drafted token's cost
    relative to a one-token step of the model (0 for drafts that cost nothing: n-gram, heads)."""

    name: str = "drafter"
    k_max: int = 8
    draft_cost: float = 0.0
    adaptive: bool = True  # k per row from its acceptance (DraftLength); False: always k_max

    @abstractmethod
    def start(self, prompts: list[list[int]], capacity: int, sampling, rng: np.random.Generator) -> DraftRun:
        """A run for these prompts (the drafter may prefill its own cache of `capacity` columns)."""

    def describe(self) -> str:
        return self.name


def verify_cost(width: int, table=VERIFY_COST) -> float:
    """A `width`-token step's cost relative to a one-token step (`table`, interpolated)."""
    sizes, costs = zip(*table)
    if width >= sizes[-1]:
        return costs[-1] * width / sizes[-1]
    return float(np.interp(width, sizes, costs))


def verify_costs(model_path: Path | str | None) -> tuple:
    """The verify-cost table for a built model: VERIFY_COST_NBITS_KERNELS when its graph has
    mlpdeploy::MatMulInt4 / MatMulInt8 nodes (an `--ort-kernels` build of int4 or int8 linears), else
    VERIFY_COST (the int4 kernel's table: the 8-bit kernel does the same work a row)."""
    return _verify_costs(str(model_path)) if model_path is not None else VERIFY_COST


@functools.lru_cache(maxsize=32)
def _verify_costs(model_path: str) -> tuple:
    if not model_path.endswith(".onnx"):
        return VERIFY_COST
    import onnx

    from mlpdeploy.contract import DOMAIN
    from mlpdeploy.plugins.matmul_nbits.onnx_function import OPS

    graph = onnx.load(model_path, load_external_data=False).graph
    return VERIFY_COST_NBITS_KERNELS if any(n.domain == DOMAIN and n.op_type in OPS.values() for n in graph.node) else VERIFY_COST


class DraftLength:
    """How many tokens a row drafts: the k that maximizes expected tokens per unit of cost.

    A row's acceptance is estimated as the fraction of drafted tokens its verify steps accepted
    (a geometric model: each draft accepted with probability α once the previous one was),
    discounted round by round (`decay`) and capped at `window` trials (so a long run of accepted
    drafts does not outweigh the rounds after it), from a prior of `prior_rate`. With k drafts a round
    emits (1 − α^(k+1)) / (1 − α) tokens on average and costs `verify_cost(k + 1) + k · draft_cost`
    one-token steps; k = 0 (no speculation, a plain step) is chosen when nothing pays. A row that
    does not draft drifts back to the prior, so it tries again later (the drafts may pay by then).
    `fixed` turns the adaptation off (always k_max); `costs` is the model's verify-cost table
    (`verify_costs`).
    """

    def __init__(self, k_max: int, draft_cost: float = 0.0, prior_rate: float = 0.6, decay: float = 0.7, window: float = 8.0,
                 fixed: bool = False, costs=VERIFY_COST):
        self.k_max, self.draft_cost, self.decay, self.window, self.fixed = k_max, draft_cost, decay, window, fixed
        self.prior = (prior_rate, 1.0)  # (accepted, trials) pseudo-counts
        ks = np.arange(k_max + 1)
        cost = np.array([verify_cost(k + 1, costs) + k * draft_cost for k in ks])
        alphas = np.linspace(0, 0.999, 1000)[:, None]  # the best k for α in steps of 0.001, looked up per round
        expected = (1 - alphas ** (ks + 1)) / (1 - alphas)
        self._best = np.argmax(expected / cost, axis=1)

    def start(self, batch: int) -> np.ndarray:
        """Per-row (accepted, trials) estimates."""
        return np.tile(np.array(self.prior, float), (batch, 1))

    def choose(self, estimate: np.ndarray) -> int:
        """The k for one row's (accepted, trials) estimate."""
        if self.fixed:
            return self.k_max
        alpha = min(estimate[0] / estimate[1], 0.999)
        return int(self._best[int(alpha * 1000)])

    def update(self, estimate: np.ndarray, drafted: int, accepted: int) -> None:
        """Fold one round into a row's estimate (in place); a round without drafts moves it to the prior."""
        if drafted == 0:
            estimate[:] = self.decay * estimate + (1 - self.decay) * np.array(self.prior)
            return
        trials = accepted + (1 if accepted < drafted else 0)
        estimate[:] = self.decay * estimate + np.array([accepted, trials], float)
        if estimate[1] > self.window:
            estimate *= self.window / estimate[1]
