"""`ngram[:n=3,k=8]`: prompt lookup. The last n tokens of a row (prompt and output so far) are
looked up in its own history; the tokens that followed their latest earlier occurrence are the
draft (n, n−1, …, 1 tried in turn; no occurrence: no draft, the round is a plain step). Costs
nothing to draft, pays when the answer copies from the prompt (quotes, edits, code fixes)."""

from __future__ import annotations

from mlpdeploy.runtime.speculative.base import Drafter, DraftRun, Drafts, Verified


class NgramDrafter(Drafter):
    name = "ngram"

    def __init__(self, n: int = 3, k: int = 8, min_n: int = 1):
        self.n, self.k_max, self.min_n = n, k, min(min_n, n)

    def describe(self) -> str:
        return f"ngram:n={self.n},k={self.k_max}"

    def start(self, prompts, capacity, sampling, rng) -> "NgramRun":
        return NgramRun([History(p, self.n) for p in prompts], self.min_n)


class History:
    """One row's tokens and, for each n-gram size, where the latest occurrence of each n-gram was
    followed (index of the next token): a lookup is one dict access."""

    def __init__(self, tokens: list[int], n: int):
        self.tokens: list[int] = []
        self.n = n
        self.follow: list[dict[tuple[int, ...], int]] = [{} for _ in range(n + 1)]
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            end = len(self.tokens)  # the n-grams ending just before this token are followed by it
            for size in range(1, min(self.n, end) + 1):
                self.follow[size][tuple(self.tokens[end - size:end])] = end
            self.tokens.append(token)

    def lookup(self, k: int, min_n: int) -> list[int]:
        for size in range(min(self.n, len(self.tokens)), min_n - 1, -1):
            start = self.follow[size].get(tuple(self.tokens[-size:]))
            if start is not None:
                return self.tokens[start:start + k]
        return []


class NgramRun(DraftRun):
    def __init__(self, rows: list[History], min_n: int):
        self.rows, self.min_n = rows, min_n

    def propose(self, limits: list[int]) -> Drafts:
        return Drafts([row.lookup(limit, self.min_n) if limit else [] for row, limit in zip(self.rows, limits)])

    def observe(self, verified: Verified) -> None:
        for row, tokens in zip(self.rows, verified.emitted):
            row.extend(tokens)
