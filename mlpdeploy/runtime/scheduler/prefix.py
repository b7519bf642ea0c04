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

Kept prompts sit in a token trie, so finding the longest shared prefix walks the new prompt once
(O(prompt length), whatever the number kept; a scan over every kept prompt took 9–12 ms at 3,000
of them on the scheduler's thread). Each trie node lists the kept prompts through it in the order
they were last used, and a match takes the most recently used of the deepest node's. The trie
costs about 270 bytes of Python objects per kept token, beside the token's cache (SmolLM2-135M:
45 KB).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

MIN_REST = 2  # prompt tokens always prefilled (module docstring)
MIN_REUSE = 4  # shorter common prefixes are not worth a copy

Key = tuple[int, ...]


class _Node:
    __slots__ = ("children", "keys")

    def __init__(self):
        self.children: dict[int, _Node] = {}
        self.keys: dict[Key, None] = {}  # the kept prompts through this node, least recently used first


class PrefixCache:
    """Kept prompt caches, `budget_bytes` at most (0: keep none)."""

    def __init__(self, budget_bytes: int):
        self.budget_bytes = budget_bytes
        self.entries: OrderedDict[Key, dict[str, np.ndarray]] = OrderedDict()  # prompt -> its buffers, least recently used first
        self.bytes = 0
        self.hits = 0
        self.reused_tokens = 0
        self._root = _Node()

    def match(self, prompt: Sequence[int]) -> tuple[int, dict[str, np.ndarray] | None]:
        """(tokens, buffers): the longest prefix of `prompt` that a kept prompt shares, leaving
        `MIN_REST` tokens to prefill; (0, None) when none shares `MIN_REUSE` tokens."""
        limit = len(prompt) - MIN_REST
        if limit < MIN_REUSE or not self.entries:
            return 0, None
        node, shared = self._root, 0
        for token in prompt[:limit]:
            child = node.children.get(int(token))
            if child is None:
                break
            node, shared = child, shared + 1
        if shared < MIN_REUSE:
            return 0, None
        key = next(reversed(node.keys))
        self._touch(key)
        self.hits += 1
        self.reused_tokens += shared
        return shared, self.entries[key]

    def takes(self, tokens: int, size: int) -> bool:
        """Whether a prompt of `tokens` tokens whose cache is `size` bytes would be kept."""
        return size <= self.budget_bytes and tokens >= MIN_REUSE + MIN_REST

    def keep(self, prompt: Sequence[int], buffers: dict[str, np.ndarray]) -> None:
        """Keep `buffers` (one-row cache arrays holding exactly `prompt`'s columns; not copied)."""
        size = sum(b.nbytes for b in buffers.values())
        key = tuple(int(t) for t in prompt)
        if not self.takes(len(key), size):
            return
        if key in self.entries:
            self._touch(key)
            return
        self.entries[key] = buffers
        node = self._root
        for token in key:
            node = node.children.setdefault(token, _Node())
            node.keys[key] = None
        self.bytes += size
        while self.bytes > self.budget_bytes:
            self._evict(next(iter(self.entries)))

    def _touch(self, key: Key) -> None:
        """Mark `key` the most recently used, in the LRU order and at every node on its path."""
        self.entries.move_to_end(key)
        node = self._root
        for token in key:
            node = node.children[token]
            del node.keys[key]
            node.keys[key] = None

    def _evict(self, key: Key) -> None:
        buffers = self.entries.pop(key)
        self.bytes -= sum(b.nbytes for b in buffers.values())
        node = self._root
        for token in key:
            child = node.children[token]
            del child.keys[key]
            if not child.keys:  # no kept prompt below it any more
                del node.children[token]
                return
            node = child
