"""Fused prefill: on a build that takes ragged steps (--ort-kernels, CachedAttention's token_rows) a
joining prompt's chunks ride in the other rows' decode steps, straight into the prompt's own row.
Every greedy answer is its solo answer under random arrivals; one session run per iteration; rows
are freed where they are (no leak after many requests); speculative rounds for a lone sequence;
`--prefill fused` on a build without ragged steps is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.scheduler import Scheduler, SchedulerOptions
from mlpdeploy.runtime.speculative import make_drafter, parse_mode
from mlpdeploy.runtime.step import Stepper
from mlpdeploy.runtime.ties import check_same_greedy

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from .scheduler_fixtures import run_workload, solo_for, workloads  # noqa: E402


def test_the_kernel_build_takes_ragged_steps(small_int4_kernels):
    """A ragged step of a chunk for one row and a token for others gives each row what its own steps give."""
    stepper = Stepper(small_int4_kernels)
    assert stepper.ragged
    prompts = [[5, 9, 14, 3, 7, 21, 30], [2, 8], [40, 41, 42, 43]]
    alone = []
    for prompt in prompts:  # each row alone: its prompt, then one token
        state = stepper.new_state(1, 32, row_lengths=True)
        first = stepper.step(state, np.array([prompt]), last_only=True)[0, -1]
        alone.append((first, stepper.step(state, np.array([[7]]))[0, -1]))
    state = stepper.new_state(4, 32, row_lengths=True)
    firsts = [stepper.step_segments(state, [(row, prompt)], 1)[0] for row, prompt in zip((3, 0), prompts[:2])]
    # row 1's whole prompt beside rows 3 and 0's next tokens, in one run
    logits = stepper.step_segments(state, [(1, prompts[2]), (3, [7]), (0, [7])], 3)
    assert state.positions.tolist() == [3, 4, 0, 8]
    assert np.array_equal(firsts[0], alone[0][0]) and np.array_equal(firsts[1], alone[1][0])
    assert np.array_equal(logits[0], alone[2][0])
    assert np.array_equal(logits[1], alone[0][1]) and np.array_equal(logits[2], alone[1][1])
    # a one-token step of every row on the same state (its own logits buffer), then a ragged one again
    assert stepper.step(state, np.full((4, 1), 7))[:, -1].shape == (4, logits.shape[1])
    assert stepper.step_segments(state, [(2, [1, 2, 3])], 1).shape == (1, logits.shape[1])
    assert state.positions.tolist() == [4, 5, 4, 9]


@pytest.mark.parametrize("segments, message", [([(0, [1]), (0, [2])], "each row of 0..3 at most once"),
                                               ([(4, [1])], "each row of 0..3 at most once"),
                                               ([(1, [])], "with a token or more"),
                                               ([(2, list(range(1, 40)))], "prefilled for 32 positions")])
def test_ragged_step_refusals(small_int4_kernels, segments, message):
    stepper = Stepper(small_int4_kernels)
    state = stepper.new_state(4, 32, row_lengths=True)
    with pytest.raises(MlpdeployError, match=message):
        stepper.step_segments(state, segments, 1)
    assert not state.positions.any()  # nothing ran


@given(workload=workloads(256, 60))
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fused_random_arrivals_equal_solo(small_int4_kernels, workload):
    run_workload(small_int4_kernels, solo_for(small_int4_kernels), workload, prefill="fused")


@given(workload=workloads(256, 60))
@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_separate_prefill_on_a_ragged_build_equals_solo(small_int4_kernels, workload):
    run_workload(small_int4_kernels, solo_for(small_int4_kernels), workload, prefill="separate")


def test_one_run_per_iteration_and_no_row_leak(small_int4_kernels):
    """While a prompt prefills beside decoding rows, each of its chunks rides in their step (no
    step of its own); after 300 requests, a third cancelled, every row is free and the answers not
    cancelled are their solo answers."""
    solo = solo_for(small_int4_kernels)
    scheduler = Scheduler(small_int4_kernels, SchedulerOptions(max_batch=4, prefill_chunk=3))
    assert scheduler.fused
    runs = []
    session = small_int4_kernels.session
    original = session.run_with_iobinding
    session.run_with_iobinding = lambda binding: (runs.append(1), original(binding))[1]
    seen: list[int] = []  # runs so far, at each decode step of the rows

    class Count:
        def step(self, rows, seconds):
            seen.append(len(runs))

        def finished(self, request):
            pass

    try:
        decoding = scheduler.submit([5, 6, 7], 60)
        next(decoding.stream())  # decoding alone now
        scheduler.observers.append(Count())
        joining = scheduler.submit(list(range(10, 40)), 2)  # 30 tokens: 10 chunks of 3
        joining.wait(30)
        steps = list(seen)
        scheduler.observers.clear()
        # every run was a decode step of the rows: the 10 chunks rode in them, none ran on its own
        assert len(steps) >= 11 and set(np.diff(steps)) == {1}
        expected, _, ties = solo(list(range(10, 40)), 2)
        check_same_greedy(expected, joining.tokens, joining.near_ties, ties)
        decoding.cancel()
        rng = np.random.default_rng(0)
        handles = []
        for i in range(300):
            prompt = [int(t) for t in rng.integers(1, 255, 1 + i % 9)]
            handle = scheduler.submit(prompt, int(rng.integers(1, 5)))
            if i % 3 == 1:
                handle.cancel()
            handles.append((i, prompt, handle))
        for i, prompt, handle in handles:
            handle._done.wait(30)
            if i % 3 != 1:
                expected, _, ties = solo(prompt, handle.max_tokens)
                check_same_greedy(expected, handle.tokens, handle.near_ties, ties)
        assert scheduler.stats() == {"active": 0, "prefilling": 0, "joining": 0, "admitted": 0, "waiting": 0, "reserved_tokens": 0}
        assert sorted(scheduler.slots._free) == [0, 1, 2, 3] and not scheduler.slots.batch.positions.any()
    finally:
        session.run_with_iobinding = original
        scheduler.close()


def test_speculative_rounds_when_alone_on_fused_rows(small_int4_kernels):
    """A lone sequence in a fused batch runs n-gram verify rounds on its own row; its answer is its solo one."""
    solo = solo_for(small_int4_kernels)
    drafter = make_drafter(parse_mode("ngram:k=4"), small_int4_kernels)
    scheduler = Scheduler(small_int4_kernels, SchedulerOptions(max_batch=4), drafter=drafter)
    prompt = [7, 8, 9, 10, 11, 7, 8, 9, 10, 11, 7, 8, 9]
    try:
        first = scheduler.submit([1, 2, 3], 3)
        first.wait(30)  # its row (0) is free again: the next sequence may take another
        alone = scheduler.submit(prompt, 20)
        tokens, _ = alone.wait(30)
        expected, _, ties = solo(prompt, 20)
        check_same_greedy(expected, tokens, alone.near_ties, ties)
        assert scheduler.drafting.stats["rounds"] > 0
        pair = [scheduler.submit(prompt, 12), scheduler.submit([3, 1, 4, 1, 5], 12)]
        for handle in pair:
            handle.wait(30)
            expected, _, ties = solo(handle.prompt, 12)
            check_same_greedy(expected, handle.tokens, handle.near_ties, ties)
    finally:
        scheduler.close()


def test_fused_prefill_needs_a_ragged_build(zoo_build):
    """--prefill fused on a build whose attention takes no ragged steps: a one-line error naming the fix."""
    from mlpdeploy.runtime.engine import Engine

    engine = Engine.load(zoo_build("llama-tiny", kv_cache=True))
    with pytest.raises(MlpdeployError, match="takes no ragged steps, which fused prefill needs; rebuild it with --ort-kernels"):
        Scheduler(engine, SchedulerOptions(prefill="fused"))
    assert not Scheduler(engine, SchedulerOptions()).fused


def test_prompts_arriving_together_prefill_in_one_run(small_int4_kernels):
    """Three prompts gathered by the queue delay with nothing decoding: one run prefills all three
    (each in its own row), and each answer is its solo answer."""
    solo = solo_for(small_int4_kernels)
    scheduler = Scheduler(small_int4_kernels, SchedulerOptions(max_batch=4, max_queue_delay_us=300_000))
    runs, firsts = [], {}
    session = small_int4_kernels.session
    original = session.run_with_iobinding
    session.run_with_iobinding = lambda binding: (runs.append(1), original(binding))[1]
    prompts = [[9, 8, 7, 6, 5], [1, 2], [30, 31, 32, 33, 34, 35, 36, 37, 38]]
    try:
        handles = [scheduler.submit(p, 6, on_event=lambda kind, value, i=i: kind == "token" and firsts.setdefault(i, len(runs)))
                   for i, p in enumerate(prompts)]
        for handle in handles:
            handle._done.wait(30)
        assert firsts == {0: 1, 1: 1, 2: 1}
        for prompt, handle in zip(prompts, handles):
            expected, _, ties = solo(prompt, 6)
            check_same_greedy(expected, handle.tokens, handle.near_ties, ties)
    finally:
        session.run_with_iobinding = original
        scheduler.close()


def test_a_long_prompt_is_copied_to_the_prefix_cache_a_piece_a_step(small_int4_kernels):
    """With copies of 2 columns a step, a finished 30-token prompt reaches the prefix cache over the
    following steps while it decodes; a prompt starting with it then prefills only its rest, and the
    answer is the solo one. A sequence that ends before its copy is done leaves nothing kept."""
    solo = solo_for(small_int4_kernels)
    stepper = Stepper(small_int4_kernels)
    column = sum(2 * stepper.layout.kv_heads * stepper.layout.head_dim * 4 for _ in stepper.layout.layers)
    scheduler = Scheduler(small_int4_kernels, SchedulerOptions(max_batch=4, copy_step_bytes=2 * column))
    long = [int(t) for t in np.random.default_rng(3).integers(1, 255, 30)]
    try:
        short_lived = scheduler.submit([7] + long[1:], 2)  # ends long before its 15 pieces are copied
        short_lived.wait(30)
        assert scheduler.prefixes.entries == {} and scheduler._keeping == []
        first = scheduler.submit(long, 24)
        first.wait(30)
        assert tuple(long) in scheduler.prefixes.entries and scheduler._keeping == []
        follow = scheduler.submit(long + [5, 6, 7], 8)
        follow.wait(30)
        assert follow.reused_tokens == 30
        expected, _, ties = solo(long + [5, 6, 7], 8)
        check_same_greedy(expected, follow.tokens, follow.near_ties, ties)
    finally:
        scheduler.close()
