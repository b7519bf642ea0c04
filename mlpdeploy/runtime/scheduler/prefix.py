"""Prompt prefixes kept from earlier prefills, so a prompt that starts the same way skips those tokens.

Chat requests start with the same template and system prompt (SmolLM2-Instruct: 24 of its ~40
tokens for a one-line question). A causal decoder's cache columns for a prompt's first n tokens
do not depend on what follows them, so a finished prefill's cache (a one-row buffer of exactly
the prompt's length, which the scheduler no longer needs once the row joined) is kept here, and
a later prompt copies the columns of its longest common prefix with any kept prompt and prefills
only the rest.

The rest is at least `MIN_REST` tokens: a one-token step runs the decode kernels (ONNX Runtime's
MatMulNBits takes its M = 1 path), whose last bits differ from a prompt step's; with two or more
tokens the columns and the logits are bit for bit those of prefilling the whole prompt (measured
on SmolLM2 int4 and tested on the zoo decoders), so a reused prefix changes no answer. Kept
prompts are evicted least recently used first once their bytes pass the budget.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

MIN_REST = 2  # prompt tokens always prefilled (module docstring)
MIN_REUSE = 4  # shorter common prefixes are not worth a copy


class PrefixCache:
    """Kept prompt caches, `budget_bytes` at most (0: keep none)."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.entries: OrderedDict[tuple[int, ...], tuple[np.ndarray, dict[str, np.ndarray]]] = OrderedDict()  # prompt -> (its ids, buffers)
        self.bytes = 0
        self.hits = 0
        self.reused_tokens = 0

    def match(self, prompt: Sequence[int]) -> tuple[int, dict[str, np.ndarray] | None]:
        """(tokens, buffers): the longest prefix of `prompt` that a kept prompt shares, leaving
        `MIN_REST` tokens to prefill; (0, None) when none shares `MIN_REUSE` tokens."""
        limit = len(prompt) - MIN_REST
        if limit < MIN_REUSE or not self.entries:
            return 0, None
        query = np.asarray(prompt[:limit], np.int64)
        best, best_key = 0, None
        for key, (ids, _) in self.entries.items():
            shared = _common_prefix(query, ids)
            if shared > best:
                best, best_key = shared, key
        if best < MIN_REUSE:
            return 0, None
        self.entries.move_to_end(best_key)
        self.hits += 1
        self.reused_tokens += best
        return best, self.entries[best_key][1]

    def keep(self, prompt: Sequence[int], buffers: dict[str, np.ndarray]) -> None:
        """Keep `buffers` (one-row cache arrays holding exactly `prompt`'s columns; not copied)."""
        size = sum(b.nbytes for b in buffers.values())
        key = tuple(int(t) for t in prompt)
        if size > self.budget_bytes or len(key) < MIN_REUSE + MIN_REST:
            return
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        self.entries[key] = (np.array(key, np.int64), buffers)
        self.bytes += size
        while self.bytes > self.budget_bytes:
            _, (_, evicted) = self.entries.popitem(last=False)
            self.bytes -= sum(b.nbytes for b in evicted.values())


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n
