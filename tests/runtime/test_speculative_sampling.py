"""Speculative sampling follows the plain sampler's distribution: chi-square over many runs of a
small model, for a deterministic drafter (n-gram: q a point mass) and a model drafter (q its own
distribution); a rule that accepts every draft fails the same test."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator
from mlpdeploy.runtime.sampling import Sampling
from mlpdeploy.runtime.step import Stepper

stats = pytest.importorskip("scipy.stats")

PROMPT = list(b"return self\n    return self\n    return")
SAMPLING = Sampling(temperature=1.5, top_k=2, seed=11)
NEW, RUNS = 4, 1000


@pytest.fixture(scope="module")
def models(zoo_build):
    """llama-small (the model) and opt-relu-small (the drafter: another architecture trained on the same bytes)."""
    return {"model": Engine.load(zoo_build("llama-small", kv_cache=True)), "draft": zoo_build("opt-relu-small", kv_cache=True)}


def _exact(engine: Engine) -> dict[tuple[int, ...], float]:
    """P(first NEW tokens) under the plain sampler: the product of its per-token distributions."""
    stepper = Stepper(engine)
    probs = {(): 1.0}
    for _ in range(NEW):
        prefixes = list(probs)
        logits, _ = stepper.prefill([PROMPT + list(p) for p in prefixes], len(PROMPT) + NEW)
        nxt = {}
        for prefix, p in zip(prefixes, SAMPLING.probs(logits)):
            for token in np.flatnonzero(p):
                nxt[prefix + (int(token),)] = probs[prefix] * p[token]
        probs = nxt
    return probs


def _p_value(observed: list[tuple[int, ...]], exact: dict) -> float:
    """Chi-square goodness of fit; cells expected fewer than 5 times are pooled."""
    counts = {k: 0 for k in exact}
    for sample in observed:
        if sample not in counts:
            return 0.0  # a sequence the plain sampler never produces
        counts[sample] += 1
    expected = np.array([exact[k] * len(observed) for k in exact])
    seen = np.array([counts[k] for k in exact])
    small = expected < 5
    if small.any():
        expected = np.append(expected[~small], expected[small].sum())
        seen = np.append(seen[~small], seen[small].sum())
    return float(stats.chisquare(seen, expected * seen.sum() / expected.sum()).pvalue)


def _samples(generator: CachedGenerator) -> list[tuple[int, ...]]:
    result = generator.generate([PROMPT] * RUNS, NEW, SAMPLING)
    return [tuple(t) for t in result.tokens]


def test_speculative_sampling_matches_the_plain_sampler(models):
    engine = models["model"]
    exact = _exact(engine)
    assert len(exact) == 2 ** NEW and abs(sum(exact.values()) - 1) < 1e-9
    assert _p_value(_samples(CachedGenerator(engine)), exact) > 1e-3  # the plain sampler itself
    for mode in ("ngram:adaptive=0", f"draft:{models['draft']},adaptive=0,k=3"):
        generator = CachedGenerator(engine, mode)
        result = generator.generate([PROMPT] * RUNS, NEW, SAMPLING)
        assert result.speculative["drafted"] > RUNS and 0 < result.speculative["accepted"] < result.speculative["drafted"], mode
        assert _p_value([tuple(t) for t in result.tokens], exact) > 1e-3, mode


@pytest.mark.slow
def test_accepting_every_draft_fails_the_test(models, monkeypatch):
    """The test can fail: keeping every draft (no rejection rule) skews the distribution."""
    from mlpdeploy.runtime.sampling import draw
    from mlpdeploy.runtime.speculative import loop

    def accept_all(p, drafts, q, rng):
        return len(drafts), draw(p[len(drafts)], rng)

    monkeypatch.setattr(loop, "accept_sampled", accept_all)
    generator = CachedGenerator(models["model"], f"draft:{models['draft']},adaptive=0,k=3")
    assert _p_value(_samples(generator), _exact(models["model"])) < 1e-6


def test_the_rule_on_one_distribution():
    """accept_sampled alone: the emitted token of one round follows p, whatever q drafted."""
    from mlpdeploy.runtime.sampling import accept_sampled, draw

    rng = np.random.default_rng(0)
    p = np.array([[0.5, 0.3, 0.2, 0.0], [0.1, 0.1, 0.1, 0.7]])
    q = np.array([[0.1, 0.1, 0.1, 0.7]])
    firsts = []
    for _ in range(20000):
        draft = draw(q[0], rng)
        accepted, token = accept_sampled(p, [draft], q, rng)
        firsts.append(draft if accepted else token)
    observed = np.bincount(firsts, minlength=4)
    assert observed[3] == 0 and stats.chisquare(observed[:3], p[0, :3] * len(firsts)).pvalue > 1e-3
    for combo in itertools.product(range(3), repeat=1):  # a point-mass draft (n-gram) too
        counts = np.zeros(4)
        for _ in range(5000):
            accepted, token = accept_sampled(p, list(combo), None, rng)
            counts[combo[0] if accepted else token] += 1
        assert stats.chisquare(counts[:3], p[0, :3] * 5000).pvalue > 1e-3
