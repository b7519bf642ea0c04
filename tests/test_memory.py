"""mlpdeploy.memory: per-stage peaks from the watcher process, nested steps, no effect on the
kernel's own peak (what /usr/bin/time reports)."""

from __future__ import annotations

import time

import numpy as np

from mlpdeploy.memory import MemoryTracker, process_peak_mib, rss_mib, step, tracking

MIB = 2**20


def _touch(mib: int, hold: float = 0.5) -> None:
    """Allocate and touch `mib` MiB, hold them `hold` seconds (the watcher samples every 2 ms, but
    on a loaded machine it may wait for a CPU), then free them."""
    block = np.ones(mib * MIB // 8)
    time.sleep(hold)
    del block


def test_each_stage_sees_its_own_peak_and_steps_nest():
    tracker = MemoryTracker()
    with tracking(tracker):
        with tracker.stage("big"):
            with step("alloc 200"):
                _touch(200)
            with step("nothing"):
                pass
        with tracker.stage("small"):
            _touch(40)
    big, small = tracker.stages["big"], tracker.stages["small"]
    assert big.peak_mib - big.start_mib >= 190, big
    assert big.steps["alloc 200"].peak_mib - big.steps["alloc 200"].start_mib >= 190
    assert big.steps["nothing"].peak_mib - big.steps["nothing"].start_mib < 20  # a later stage is not charged for an earlier peak
    assert 35 <= small.peak_mib - small.start_mib < 150
    assert big.peak_mib >= big.steps["alloc 200"].peak_mib  # an outer stage's peak covers its steps'
    data = big.to_json()
    assert set(data) == {"seconds", "peak_rss_mib", "rss_start_mib", "rss_end_mib", "steps"} and list(data["steps"]) == ["alloc 200", "nothing"]


def test_steps_outside_a_tracker_record_nothing():
    tracker = MemoryTracker()
    with step("anything"):
        _touch(1)
    with tracking(tracker), step("recorded"):
        pass
    assert list(tracker.stages) == ["recorded"]


def test_the_process_peak_is_left_as_the_kernel_measured_it():
    """Measuring stages must not reset the kernel's high-water mark: getrusage and /usr/bin/time
    would then report the last stage's peak, not the process's."""
    _touch(300)
    before = process_peak_mib()
    assert before >= rss_mib() + 250
    tracker = MemoryTracker()
    with tracker.stage("later"):
        _touch(10)
    assert process_peak_mib() >= before
