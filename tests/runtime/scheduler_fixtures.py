"""What the scheduler's tests share: solo answers, a gate that holds the loop, and random workloads
checked against solo answers (the int4 --ort-kernels zoo build is conftest.py's `small_int4_kernels`)."""

from __future__ import annotations

import threading
import time

import pytest

from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator
from mlpdeploy.runtime.scheduler import Scheduler, SchedulerOptions
from mlpdeploy.runtime.ties import check_same_greedy

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import strategies as st  # noqa: E402


class Solo:
    """Solo answers (the plain batch-1 loop), each computed once."""

    def __init__(self, engine: Engine):
        self.generator, self.done = CachedGenerator(engine), {}

    def __call__(self, prompt, max_tokens, sampling=None, stops=()):
        key = (tuple(prompt), max_tokens, repr(sampling), tuple(stops))
        if key not in self.done:
            result = self.generator.generate([list(prompt)], max_tokens, sampling, list(stops))
            self.done[key] = (result.tokens[0], result.finish[0], result.near_ties[0])
        return self.done[key]


class Gate:
    """A scheduler observer that holds the loop after a decode step while closed (tests need it still)."""

    def __init__(self):
        self.open, self.held = threading.Event(), threading.Event()
        self.open.set()
        self.rows: list[int] = []

    def step(self, rows, seconds):
        self.rows.append(rows)
        if not self.open.is_set():
            self.held.set()
            self.open.wait(30)

    def finished(self, request):
        pass


def workloads(vocab: int, longest: int):
    """(requests, max_batch, chunk, copy bytes): each request (prompt, max_tokens, pause before the
    next); a prompt may start with the workload's shared prefix (a chat template: the prefix cache
    reuses it); copy bytes 1 copies a prefilled prompt into its row one column a step and moves a
    last row into the place of one that left two columns a step (rows leaving meanwhile), the
    default at once."""
    tokens = st.lists(st.integers(1, vocab - 1), min_size=1, max_size=longest)
    request = st.tuples(st.booleans(), tokens, st.integers(1, 10), st.floats(0, 0.003))
    workload = st.tuples(st.lists(st.integers(1, vocab - 1), min_size=4, max_size=12), st.lists(request, min_size=1, max_size=7), st.integers(1, 4),
                         st.sampled_from([None, 3, 10_000]), st.sampled_from([1, SchedulerOptions().copy_step_bytes]))
    return workload.map(lambda w: ([((w[0] if shared else []) + prompt, n, pause) for shared, prompt, n, pause in w[1]], w[2], w[3], w[4]))


def run_workload(engine: Engine, solo: Solo, workload, prefill: str = "auto") -> None:
    requests, max_batch, chunk, copy_bytes = workload
    scheduler = Scheduler(engine, SchedulerOptions(max_batch=max_batch, prefill_chunk=chunk, copy_step_bytes=copy_bytes, prefill=prefill))
    try:
        handles = []
        for prompt, max_tokens, pause in requests:
            handles.append(scheduler.submit(prompt, max_tokens))
            time.sleep(pause)
        for (prompt, max_tokens, _), handle in zip(requests, handles):
            tokens, finish = handle.wait(60)
            expected, expected_finish, expected_ties = solo(prompt, max_tokens)
            assert finish == expected_finish == "length"
            if chunk == 10_000:  # never chunked: every row computes bit for bit what it computes alone
                assert tokens == expected, (prompt, max_tokens)
            else:  # a prompt prefilled in chunks may flip a near-tie, never anything else
                check_same_greedy(expected, tokens, handle.near_ties, expected_ties)
        assert scheduler.stats() == {"active": 0, "prefilling": 0, "joining": 0, "admitted": 0, "waiting": 0, "reserved_tokens": 0}
    finally:
        scheduler.close()


_SOLOS: dict[int, Solo] = {}


def solo_for(engine: Engine) -> Solo:
    return _SOLOS.setdefault(id(engine), Solo(engine))
