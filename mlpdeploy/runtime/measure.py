"""Latency of a cached decoder: prefill time and per-token decode time at a given context.

Decode at context C means: a prompt of C tokens is prefilled, then each new token is one step
over a cache of C, C+1, ... tokens. Steps are timed one by one (wall clock, this process); the
summary gives their p50/p90 and tokens per second. Prompts are random token ids (the numbers
do not depend on the text).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from mlpdeploy.errors import MlpdeployError


@dataclass
class DecodeStats:
    context: int
    new_tokens: int
    batch: int
    prefill_ms: float  # median over the repeats
    decode_ms_p50: float
    decode_ms_p90: float
    tokens_per_second: float  # batch × steps / decode time
    repeats: int

    def to_json(self) -> dict:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summarize(context: int, new_tokens: int, batch: int, prefills: list[float], steps: list[float]) -> DecodeStats:
    """Seconds in, milliseconds out."""
    return DecodeStats(
        context=context,
        new_tokens=new_tokens,
        batch=batch,
        prefill_ms=statistics.median(prefills) * 1e3,
        decode_ms_p50=percentile(steps, 50) * 1e3,
        decode_ms_p90=percentile(steps, 90) * 1e3,
        tokens_per_second=batch * len(steps) / sum(steps),
        repeats=len(prefills),
    )


# (prompts [batch][context], new tokens) -> (prefill seconds, [seconds per decode step])
DecodeFn = Callable[[list[list[int]], int], tuple[float, list[float]]]


def measure_decode(decode: DecodeFn, vocab: int, context: int, new_tokens: int, batch: int = 1, repeats: int = 3,
                   warmup: int = 1, seed: int = 0, tokens: np.ndarray | None = None) -> DecodeStats:
    """Run `decode` `warmup` + `repeats` times on prompts: random ids, or with `tokens` (real text,
    e.g. `--data`'s held-out tokens) windows of it at seeded offsets; every step of the timed runs counts."""
    if context < 1 or new_tokens < 2:
        raise MlpdeployError(f"decode timing needs a context of at least 1 and at least 2 new tokens; got {context} and {new_tokens}")
    if tokens is not None and len(tokens) <= context:
        raise MlpdeployError(f"the data holds {len(tokens)} held-out tokens, too few for a prompt of {context}; give more text or a smaller --context")
    rng = np.random.default_rng(seed)
    prefills, steps = [], []
    for run in range(warmup + repeats):
        if tokens is None:
            prompts = rng.integers(0, vocab, (batch, context)).tolist()
        else:
            prompts = [tokens[s:s + context].tolist() for s in rng.integers(0, len(tokens) - context, size=batch)]
        prefill, step_times = decode(prompts, new_tokens)
        if run >= warmup:
            prefills.append(prefill)
            steps.extend(step_times)
    return summarize(context, new_tokens, batch, prefills, steps)


def generator_decode(generator) -> DecodeFn:
    """A DecodeFn over `mlpdeploy.runtime.generate.CachedGenerator` (greedy, no stop tokens)."""

    def run(prompts: list[list[int]], new_tokens: int) -> tuple[float, list[float]]:
        result = generator.generate(prompts, new_tokens)
        return result.prefill_seconds, result.step_seconds

    return run


def torch_decode(module, layout) -> DecodeFn:
    """A DecodeFn over a cached decoder in torch eager (`forward_cached`, its own cache carried over)."""
    import torch

    def run(prompts: list[list[int]], new_tokens: int) -> tuple[float, list[float]]:
        ids = torch.tensor(prompts)
        batch, context = ids.shape
        empty = torch.zeros(batch, layout.kv_heads, 0, layout.head_dim)
        past = [(empty, empty) for _ in layout.layers]
        mask = torch.ones(batch, context, dtype=torch.int64)
        positions = torch.arange(context).expand(batch, context)
        times = []
        with torch.no_grad():
            start = time.perf_counter()
            logits, past = module.forward_cached(ids, mask, positions, past)
            prefill = time.perf_counter() - start
            for step in range(new_tokens - 1):
                start = time.perf_counter()
                token = logits[:, -1].argmax(-1, keepdim=True)
                mask = torch.ones(batch, context + step + 1, dtype=torch.int64)
                positions = torch.full((batch, 1), context + step)
                logits, past = module.forward_cached(token, mask, positions, past)
                times.append(time.perf_counter() - start)
        return prefill, times

    return run
