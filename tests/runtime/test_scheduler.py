"""The in-flight scheduler: every request's greedy answer is its solo answer under random arrival
orders, lengths, batch limits, prefill chunks and shared prompt prefixes (on the zoo llama-tiny and llama-small and the
truncated real SmolLM2); sampled answers follow each request's own seed; stop tokens and max tokens
per request; cancellation frees rows and budget (no leak after 1,000 requests); the batch limit, the
cache budget and the queue limit; speculative rounds when a sequence runs alone; the solo fallback."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator
from mlpdeploy.runtime.sampling import Sampling
from mlpdeploy.runtime.scheduler import QueueFull, Scheduler, SchedulerOptions, SoloScheduler, make_scheduler
from mlpdeploy.runtime.speculative import make_drafter, parse_mode
from mlpdeploy.runtime.ties import check_same_greedy

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from .scheduler_fixtures import Gate, run_workload, solo_for, workloads  # noqa: E402


@pytest.fixture(scope="module")
def tiny(zoo_build):
    return Engine.load(zoo_build("llama-tiny", kv_cache=True))


@pytest.fixture(scope="module")
def small(zoo_build):
    return Engine.load(zoo_build("llama-small", kv_cache=True))


@pytest.fixture(scope="module")
def smollm2(smollm2_small_kv):
    return Engine.load(smollm2_small_kv)


@given(workload=workloads(256, 40))
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_arrivals_equal_solo_llama_tiny(tiny, workload):
    run_workload(tiny, solo_for(tiny), workload)


@given(workload=workloads(256, 60))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_arrivals_equal_solo_llama_small(small, workload):
    run_workload(small, solo_for(small), workload)


@given(workload=workloads(256, 60))
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_arrivals_equal_solo_int4_kernels(small_int4_kernels, workload):
    """Batched steps and verify-sized chunks through mlpdeploy's int4 kernel: each row is its solo row."""
    run_workload(small_int4_kernels, solo_for(small_int4_kernels), workload)


def test_verify_costs_follow_the_build(small, small_int4_kernels):
    """An --ort-kernels int4 build weighs drafts against its own (cheaper) verify passes."""
    from mlpdeploy.runtime.speculative.base import VERIFY_COST, VERIFY_COST_NBITS_KERNELS, DraftLength, verify_costs

    assert verify_costs(small.path) == VERIFY_COST
    assert verify_costs(small_int4_kernels.path) == VERIFY_COST_NBITS_KERNELS
    estimate = np.array([0.3, 1.0])  # 30% acceptance: too little for MatMulNBits' verify passes, enough for the kernel's
    assert DraftLength(8).choose(estimate) == 0
    assert DraftLength(8, costs=VERIFY_COST_NBITS_KERNELS).choose(estimate) >= 1


@given(workload=workloads(49152, 30))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_arrivals_equal_solo_smollm2(smollm2, workload):
    run_workload(smollm2, solo_for(smollm2), workload)


def test_sampled_answers_follow_each_request_seed(tiny):
    """Each request draws from its own generator seeded as the solo loop's: same tokens as alone."""
    solo = solo_for(tiny)
    scheduler = Scheduler(tiny, SchedulerOptions(max_batch=3, prefill_chunk=10_000))
    try:
        settings_ = [Sampling(0.9, top_k=30, seed=s) for s in (1, 2, 3)] + [Sampling(0.7, top_p=0.9, seed=4), Sampling()]
        prompts = [list(b"def f(x):"), list(b"import "), list(b"class A"), list(b"for i in"), list(b"x = ")]
        handles = [scheduler.submit(p, 12, s) for p, s in zip(prompts, settings_)]
        for prompt, sampling, handle in zip(prompts, settings_, handles):
            assert handle.wait(30)[0] == solo(prompt, 12, sampling)[0]
    finally:
        scheduler.close()


def test_stop_tokens_and_max_tokens_per_request(tiny):
    solo = solo_for(tiny)
    prompt = list(b"def __init__(self")
    full = solo(prompt, 20)[0]
    scheduler = Scheduler(tiny, SchedulerOptions(max_batch=4))
    try:
        stop = full[5]
        stopped = scheduler.submit(prompt, 20, stop_tokens=[stop])
        short = scheduler.submit(prompt, 3)
        long = scheduler.submit(prompt, 20, stop_tokens=[999])  # never produced by a byte model
        first = scheduler.submit(prompt, 20, stop_tokens=[full[0]])  # the prefill's own token ends it: never joins the batch
        assert stopped.wait(30) == (full[: full.index(stop) + 1], "stop")
        assert short.wait(30) == (full[:3], "length")
        assert long.wait(30) == (full, "length")
        assert first.wait(30) == (full[:1], "stop")
        assert list(stopped.stream()) == full[: full.index(stop) + 1]  # the events a streaming consumer reads
    finally:
        scheduler.close()


def test_cancellation_frees_rows_and_budget_no_leak(tiny):
    """1,000 requests, a third cancelled before they run, a third after their first token: at the
    end no row, budget or queue entry is left, and the ones not cancelled are their solo answers."""
    solo = solo_for(tiny)
    prompts = [list(f"x{i} = ".encode()) for i in range(10)]
    scheduler = Scheduler(tiny, SchedulerOptions(max_batch=8))
    rng = np.random.default_rng(0)
    try:
        handles = []
        for i in range(1000):
            prompt, max_tokens, how = prompts[i % 10], int(rng.integers(1, 4)), i % 3
            if how == 2:  # cancelled by its consumer at its first token (on the scheduler's thread)
                box: list = []
                handle = scheduler.submit(prompt, max_tokens + 2, on_event=lambda k, v, b=box: b and (k == "token") and b[0].cancel())
                box.append(handle)
            else:
                handle = scheduler.submit(prompt, max_tokens)
                if how == 1:
                    handle.cancel()
            handles.append((how, prompt, max_tokens, handle))
        for how, prompt, max_tokens, handle in handles:
            handle._done.wait(30)
            if how == 0:
                assert handle.wait() == (solo(prompt, max_tokens)[0], "length")
            elif how == 1:
                assert handle.finish in ("cancelled", "length")  # cancelled, unless it had run already
            else:
                assert handle.finish == "cancelled" or len(handle.tokens) <= max_tokens + 2
        assert scheduler.stats() == {"active": 0, "prefilling": 0, "joining": 0, "admitted": 0, "waiting": 0, "reserved_tokens": 0}
        assert scheduler.slots.requests == [] and not scheduler.slots.lengths.any()
        assert sum(h.finish == "cancelled" for *_, h in handles) > 300
        assert scheduler.generate(prompts[0], 5) == (solo(prompts[0], 5)[0], "length")  # still healthy
    finally:
        scheduler.close()


def _until(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


class HoldWhileJoining:
    """A scheduler observer that holds the loop after a decode step while a prompt is joining its row."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler, self.held, self.release = scheduler, threading.Event(), threading.Event()

    def step(self, rows, seconds):
        if self.scheduler.stats()["joining"] and not self.release.is_set():
            self.held.set()
            self.release.wait(30)

    def finished(self, request):
        pass


def test_a_prefilled_prompt_joins_its_row_a_piece_a_step_while_others_decode(tiny):
    """copy_step_bytes of one byte: a 76-token prompt's cache goes into its row one column a step
    beside decoding rows that leave meanwhile (the next free row moves down: the copy starts over),
    and every answer is its solo answer; a request cancelled while it joins frees its row and budget."""
    solo = solo_for(tiny)
    long = list(b"def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return a * b\n\ndef sub(a,")
    others = [(list(b"def f(x):"), 60), (list(b"import "), 30), (list(b"class A:"), 40)]
    scheduler = Scheduler(tiny, SchedulerOptions(max_batch=4, copy_step_bytes=1))
    staged_rows = []
    stage = scheduler.slots.stage
    scheduler.slots.stage = lambda *args: (staged_rows.append(scheduler.slots.active), stage(*args))[1]
    try:
        handles = [scheduler.submit(prompt, n) for prompt, n in others]
        joiner = scheduler.submit(long, 20)  # prefilled after the others (in turn): it joins beside them
        for (prompt, n), handle in zip(others, handles):
            assert handle.wait(60) == (solo(prompt, n)[0], "length")
        assert joiner.wait(60) == (solo(long, 20)[0], "length")
        assert len(set(staged_rows)) >= 2, staged_rows  # a row left while it joined: staged into another row

        hold = HoldWhileJoining(scheduler)
        scheduler.observers.append(hold)
        decoding = scheduler.submit(others[0][0], 110)
        _until(lambda: scheduler.stats()["active"] == 1)
        joiner = scheduler.submit(long, 5)
        assert hold.held.wait(30)
        joiner.cancel()
        hold.release.set()
        assert joiner.wait(30)[1] == "cancelled" and len(joiner.tokens) == 1  # its first token came with its prefill
        _until(lambda: scheduler.stats()["joining"] == 0)
        assert scheduler.stats()["active"] == 1 and scheduler.stats()["reserved_tokens"] == len(others[0][0]) + 110
        decoding.cancel()
        decoding._done.wait(30)
        _until(lambda: scheduler.stats() == {"active": 0, "prefilling": 0, "joining": 0, "admitted": 0, "waiting": 0, "reserved_tokens": 0})
    finally:
        scheduler.close()


def test_a_long_last_row_moves_into_a_left_row_a_piece_a_step(tiny):
    """copy_step_bytes of one byte: when a short row leaves, the long last row moves into its place
    two columns a step while the left row runs as a hole; another row leaving meanwhile ends that
    move first. Every answer is its solo answer and nothing is left behind."""
    solo = solo_for(tiny)
    short = [(list(b"import "), 20), (list(b"x = "), 30)]
    long = (list(b"def add(a, b):\n    return a + b\n\ndef mul(a, b):\n    return"), 40)
    scheduler = Scheduler(tiny, SchedulerOptions(max_batch=4, copy_step_bytes=1))
    holes = []
    advance = scheduler.slots.advance_move
    scheduler.slots.advance_move = lambda piece: (holes.append(scheduler.slots.moving and scheduler.slots.moving[0]), advance(piece))[1]
    try:
        handles = [scheduler.submit(prompt, n) for prompt, n in [*short, long]]  # prefilled in turn: the long one joins last
        for (prompt, n), handle in zip([*short, long], handles):
            assert handle.wait(60) == (solo(prompt, n)[0], "length")
        assert any(hole is not None for hole in holes), "no row moved a piece at a time"
        _until(lambda: scheduler.stats() == {"active": 0, "prefilling": 0, "joining": 0, "admitted": 0, "waiting": 0, "reserved_tokens": 0})
        assert scheduler.slots.moving is None and not scheduler.slots.lengths.any()
    finally:
        scheduler.close()


def test_batch_limit_budget_and_queue(tiny):
    gate = Gate()
    scheduler = Scheduler(tiny, SchedulerOptions(max_batch=3, max_cache_tokens=60, max_queue_size=2))
    scheduler.observers.append(gate)
    reserved: list[int] = []
    scheduler.observers.append(type("Probe", (), {"step": lambda self, rows, s: reserved.append(scheduler._reserved),
                                                  "finished": lambda self, r: None})())
    try:
        with pytest.raises(MlpdeployError, match="exceeds the cache budget of 60 tokens"):
            scheduler.submit([1] * 50, 20)
        with pytest.raises(MlpdeployError, match="exceeds the model's 128 positions"):
            scheduler.submit([1] * 120, 20)
        gate.open.clear()
        running = [scheduler.submit(list(b"abcdefghij"), 18) for _ in range(2)]  # 28 tokens each: two fit the budget of 60
        assert gate.held.wait(30)
        waiting = [scheduler.submit(list(b"abcdefghij"), 18) for _ in range(2)]
        with pytest.raises(QueueFull, match="Exceeds maximum queue size"):
            scheduler.submit(list(b"abcdefghij"), 18)
        assert scheduler.stats()["waiting"] == 2
        gate.open.set()
        for handle in running + waiting:
            assert handle.wait(30)[1] == "length"
        assert max(gate.rows) == 2 and max(reserved) <= 60  # the budget, not max_batch, bounded the batch
        assert running[0].tokens == waiting[1].tokens
    finally:
        gate.open.set()
        scheduler.close()


def test_speculative_rounds_only_when_alone(tiny):
    """With an n-gram drafter a sequence alone is decoded by verify rounds (greedy answer = solo, up
    to near-ties); while two run, every step is a plain one-token step for both."""
    solo = solo_for(tiny)
    drafter = make_drafter(parse_mode("ngram:k=4"), tiny)
    scheduler = Scheduler(tiny, SchedulerOptions(max_batch=4), drafter=drafter)
    prompt = list(b"def area(w, h):\n    return w * h\n\ndef area(w, h):\n    return ")
    try:
        alone = scheduler.submit(prompt, 24)
        tokens, _ = alone.wait(30)
        expected, _, ties = solo(prompt, 24)
        check_same_greedy(expected, tokens, alone.near_ties, ties)
        rounds = scheduler.drafting.stats["rounds"]
        assert 0 < rounds < 24 and scheduler.drafting.stats["accepted"] > 0
        gate = Gate()
        gate.open.clear()
        scheduler.observers.append(gate)
        pair = [scheduler.submit(prompt, 24), scheduler.submit(list(b"import os\n"), 24)]
        gate.held.wait(30)
        while scheduler.stats()["active"] < 2:  # let the second join (one step at a time)
            gate.open.set()
            gate.open.clear()
            time.sleep(0.01)
        before = scheduler.drafting.stats["rounds"]
        for _ in range(5):
            gate.open.set()
            gate.open.clear()
            time.sleep(0.01)
        assert scheduler.drafting.stats["rounds"] == before  # two active: plain steps only
        gate.open.set()
        for handle, p in zip(pair, [prompt, list(b"import os\n")]):
            check_same_greedy(solo(p, 24)[0], handle.wait(30)[0], handle.near_ties, solo(p, 24)[2])
    finally:
        scheduler.close()


def test_builds_without_row_lengths_generate_alone(zoo_export, tmp_path):
    """A build that keeps the exported attention (--no-ort-fusions) cannot batch rows of different
    lengths: `make_scheduler` gives it the one-request-per-thread fallback, same answers."""
    from mlpdeploy.backends import get_backend
    from mlpdeploy.backends.onnxruntime import OrtOptions

    _, exported = zoo_export("llama-tiny", kv_cache=True)
    get_backend("onnxruntime").build(exported, tmp_path / "plain.ort.onnx", OrtOptions(device="cpu", fusions=False))
    engine = Engine.load(tmp_path / "plain.ort.onnx")
    with pytest.raises(MlpdeployError, match="without per-row cache lengths"):
        Scheduler(engine)
    scheduler = make_scheduler(engine, SchedulerOptions(max_batch=2))
    assert isinstance(scheduler, SoloScheduler)
    prompts = [list(b"def "), list(b"class "), list(b"x")]
    handles = [scheduler.submit(p, 8) for p in prompts]
    generator = CachedGenerator(engine)
    for prompt, handle in zip(prompts, handles):
        assert handle.wait(30) == (generator.generate([prompt], 8).tokens[0], "length")


@pytest.mark.parametrize("field, message", [("smallest_chunk", "prefill chunks (--prefill-min-chunk) take at least 1 token, got 0"),
                                            ("prefill_chunk", "a fixed prefill chunk (prefill_chunk) takes at least 1 token, got 0"),
                                            ("copy_step_bytes", "copy_step_bytes must be at least 1, got 0")])
def test_chunk_options_refused_by_name(field, message):
    with pytest.raises(MlpdeployError, match=re.escape(message)):
        SchedulerOptions(**{field: 0})
