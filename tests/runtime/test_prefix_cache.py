"""The scheduler's prefix cache: the longest kept prefix, what it leaves to prefill, least-recently-used
eviction by bytes; and served prompts that share a prefix get their solo answers bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.scheduler import Scheduler, SchedulerOptions
from mlpdeploy.runtime.scheduler.prefix import MIN_REST, MIN_REUSE, PrefixCache

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


def _buffers(length: int, fill: float = 0.0) -> dict[str, np.ndarray]:
    return {"past.0.key": np.full((1, 2, length, 4), fill, np.float32), "past.0.value": np.full((1, 2, length, 4), fill, np.float32)}


def _shared(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@given(kept=st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=13), max_size=6),
       prompt=st.lists(st.integers(0, 3), min_size=1, max_size=17))
@settings(max_examples=200, deadline=None)
def test_match_is_the_longest_kept_prefix_leaving_tokens_to_prefill(kept, prompt):
    cache = PrefixCache(1 << 30)
    for tokens in kept:
        cache.keep(tokens, _buffers(len(tokens)))
    eligible = [t for t in kept if len(t) >= MIN_REUSE + MIN_REST]
    expected = max((min(_shared(prompt, t), len(prompt) - MIN_REST) for t in eligible), default=0)
    expected = expected if expected >= MIN_REUSE else 0
    reused, buffers = cache.match(prompt)
    assert reused == expected
    assert (buffers is None) == (reused == 0)
    if buffers is not None:
        assert buffers["past.0.key"].shape[2] >= reused


class _ScanReference:
    """The prefix cache as a linear scan over kept prompts in LRU order (what the trie replaces)."""

    def __init__(self, budget: int):
        self.budget, self.entries = budget, {}

    def keep(self, key, buffers):
        size = sum(b.nbytes for b in buffers.values())
        if size > self.budget or len(key) < MIN_REUSE + MIN_REST:
            return
        if key in self.entries:
            self.entries[key] = self.entries.pop(key)
            return
        self.entries[key] = buffers
        while sum(sum(b.nbytes for b in v.values()) for v in self.entries.values()) > self.budget:
            del self.entries[next(iter(self.entries))]

    def match(self, prompt):
        limit = len(prompt) - MIN_REST
        shared = {key: min(_shared(prompt, key), limit) for key in self.entries}
        best = max(shared.values(), default=0)
        if limit < MIN_REUSE or best < MIN_REUSE:
            return 0, None
        key = [k for k in self.entries if shared[k] == best][-1]  # the most recently used of the longest
        self.entries[key] = self.entries.pop(key)
        return best, self.entries[key]


@given(ops=st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 2), min_size=1, max_size=11)), max_size=40),
       budget_tokens=st.integers(0, 40))
@settings(max_examples=300, deadline=None)
def test_the_trie_matches_and_evicts_as_a_scan_over_kept_prompts_in_lru_order(ops, budget_tokens):
    """Random keeps and matches (small alphabet: many shared prefixes, ties between equally long
    matches, evictions): the same lengths and the same kept buffers as the reference scan; the
    trie holds exactly the kept prompts (evicted ones leave no nodes behind)."""
    per_token = sum(b.nbytes for b in _buffers(1).values())
    cache, reference = PrefixCache(budget_tokens * per_token), _ScanReference(budget_tokens * per_token)
    for is_keep, tokens in ops:
        if is_keep:
            buffers = _buffers(len(tokens))
            cache.keep(tokens, buffers)
            reference.keep(tuple(tokens), buffers)
        else:
            got, expected = cache.match(tokens), reference.match(tokens)
            assert got[0] == expected[0] and got[1] is expected[1]
        assert list(cache.entries) == list(reference.entries)
    assert cache.bytes == sum(sum(b.nbytes for b in v.values()) for v in reference.entries.values())
    below_root = set().union(*(node.keys for node in cache._root.children.values()))
    assert below_root == set(cache.entries)


def test_least_recently_used_prompts_go_first_past_the_budget():
    one = sum(b.nbytes for b in _buffers(8).values())
    cache = PrefixCache(2 * one)
    a, b, c = [1] * 8, [2] * 8, [3] * 8
    cache.keep(a, _buffers(8))
    cache.keep(b, _buffers(8))
    assert cache.match(a + [9, 9])[0] == 8  # a used last: b is the older one now
    cache.keep(c, _buffers(8))
    assert cache.bytes == 2 * one
    assert cache.match(b + [9, 9]) == (0, None)
    assert cache.match(a + [9, 9])[0] == 8 and cache.match(c + [9, 9])[0] == 8
    assert (cache.hits, cache.reused_tokens) == (3, 24)


def test_a_zero_budget_keeps_nothing_and_a_negative_one_is_refused():
    cache = PrefixCache(0)
    cache.keep([1] * 10, _buffers(10))
    assert cache.match([1] * 12) == (0, None) and not cache.entries
    with pytest.raises(MlpdeployError, match=r"--prefix-cache-mb\) takes 0 MiB \(off\) or more, got -1"):
        SchedulerOptions(prefix_cache_mb=-1)


@pytest.fixture(scope="module")
def engines(zoo_build, smollm2_small_kv):
    from mlpdeploy.runtime.engine import Engine

    return {"llama-tiny": Engine.load(zoo_build("llama-tiny", kv_cache=True)), "smollm2": Engine.load(smollm2_small_kv)}


@pytest.mark.parametrize("model", ["llama-tiny", "smollm2"])
@pytest.mark.parametrize("rest", [MIN_REST, 3, 11])
def test_prompts_sharing_a_prefix_reuse_it_and_answer_as_alone(engines, model, rest):
    """A system-prompt-like prefix: the second and later prompts copy it and prefill only their rest;
    every answer equals the solo loop's, token for token (one request at a time: no chunking)."""
    from mlpdeploy.runtime.generate import CachedGenerator

    engine = engines[model]
    vocab = 256 if model == "llama-tiny" else 49152
    rng = np.random.default_rng(rest)
    prefix = rng.integers(1, vocab, 23).tolist()
    prompts = [prefix + rng.integers(1, vocab, rest + extra).tolist() for extra in (0, 1, 4)]
    prompts.append(prompts[1][:-1] + [prompts[1][-1] % (vocab - 1) + 1])  # the same prompt but its last token
    solo = CachedGenerator(engine)
    scheduler = Scheduler(engine, SchedulerOptions(max_batch=2, prefill_chunk=10_000))
    try:
        for index, prompt in enumerate(prompts):
            request = scheduler.submit(prompt, 6)
            tokens, _ = request.wait(60)
            assert tokens == solo.generate([prompt], 6).tokens[0], index
            expected = 0 if index == 0 else len(prompts[3]) - MIN_REST if index == 3 else len(prefix)
            assert request.reused_tokens == expected, index
    finally:
        scheduler.close()
