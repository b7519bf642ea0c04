"""How the scheduler sizes a joining prompt's prefill chunks (`runtime.scheduler.prefill.ChunkPolicy`), from
measured step and chunk times given by hand."""

from __future__ import annotations

import pytest

from mlpdeploy.runtime.scheduler.prefill import FINISH, ChunkPolicy


def policy(stall: float = 1.0, smallest: int = 2, step_ms: dict[int, float] | None = None, per_token_ms: float = 0.5) -> ChunkPolicy:
    """A policy that has seen decode steps of `step_ms` (rows → ms; a one-row step is the chunk's base)
    and a chunk costing `per_token_ms` a further token."""
    chunks = ChunkPolicy(stall, smallest=smallest)
    for rows, ms in (step_ms or {1: 4.0, 4: 6.0, 8: 9.0}).items():
        chunks.observe_step(rows, ms / 1e3)
    base = chunks.base * 1e3
    chunks.observe_chunk(11, (base + 10 * per_token_ms) / 1e3)
    return chunks


def test_with_nothing_decoding_the_whole_prompt_goes_at_once():
    assert policy().size(1000, rows=0) == 1000


def test_a_long_prompt_is_chunked_to_the_stall():
    chunks = policy(stall=1.0)  # 4 rows decode in 6 ms: a chunk of 4 ms + 0.5 ms a further token takes 1 + 2/0.5 = 5 tokens
    assert chunks.size(1000, rows=4) == 5
    assert policy(stall=2.0).size(1000, rows=4) == 17  # 12 ms: 1 + 8 / 0.5


def test_a_prompt_that_fits_the_finish_allowance_goes_in_one_chunk():
    chunks = policy(stall=1.0)
    finish = 1 + int((FINISH * 6.0 - 4.0) / 0.5)  # 11 tokens fit 1.5 stalls of 4 rows' 6 ms steps
    assert chunks.size(finish, rows=4) == finish
    assert chunks.size(finish + 1, rows=4) == 5


def test_a_remainder_under_the_smallest_chunk_goes_with_the_chunk_before():
    chunks = policy(stall=1.0, smallest=8, step_ms={1: 4.0, 4: 4.5})  # the stall allows 2 tokens: the smallest chunk, 8, wins
    assert chunks.size(100, rows=4) == 8
    assert chunks.size(15, rows=4) == 15  # 8 + a remainder of 7 < 8


def test_the_previous_chunk_of_the_prompt_raises_the_per_token_cost():
    chunks = policy(stall=1.0)
    assert chunks.size(1000, rows=4, last=(5, 0.0084)) == 2  # 1.1 ms a further token late in a long prompt: 1 + int(2 / 1.1)


@pytest.mark.parametrize("fixed", [1, 7])
def test_a_fixed_chunk_is_taken_as_it_is(fixed):
    assert ChunkPolicy(1.0, fixed=fixed).size(100, rows=3) == fixed


def fused(stall: float = 1.0, smallest: int = 2, per_token_ms: float = 0.5) -> ChunkPolicy:
    """A policy that has seen decode steps of 1 / 4 / 8 rows (4 / 6 / 9 ms) and a 4-row step carrying 10
    prompt tokens that took `per_token_ms` a token more (fused prefill: no base, the step reads the weights)."""
    chunks = ChunkPolicy(stall, smallest=smallest)
    for rows, ms in {1: 4.0, 4: 6.0, 8: 9.0}.items():
        chunks.observe_step(rows, ms / 1e3)
    chunks.observe_fused(4, 10, (6.0 + 10 * per_token_ms) / 1e3)
    return chunks


def test_fused_chunks_add_the_stall_to_the_step():
    assert fused(stall=1.0).fused_size(1000, rows=4) == 12  # 6 ms / 0.5 ms a token
    assert fused(stall=0.25).fused_size(1000, rows=8) == 4  # 2.25 ms / 0.5
    assert fused(stall=1.0).fused_size(1000, rows=0) == 1000  # nothing decoding: every prompt whole
    assert fused(stall=0.1, smallest=3).fused_size(1000, rows=4) == 3  # the smallest chunk wins


def test_fused_chunks_finish_a_prompt_that_fits_the_allowance():
    chunks = fused(stall=1.0)
    assert chunks.fused_size(int(FINISH * 12), rows=4) == 18
    assert chunks.fused_size(19, rows=4) == 12


def test_a_fused_step_timed_under_a_plain_one_does_not_make_tokens_free():
    chunks = fused()
    for _ in range(50):
        chunks.observe_fused(4, 10, 5.0e-3)  # faster than the 6 ms plain step: noise
    assert chunks.fused_per_token == pytest.approx(6.0e-3 / 32, rel=0.05)
    assert 30 <= chunks.fused_size(10_000, rows=4) <= 32  # 6 ms / (6 ms / 32), where 0.5 ms a token gave 12
