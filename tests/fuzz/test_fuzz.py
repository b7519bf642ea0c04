"""Differential fuzzing at a fixed budget (part of `make test`): random models from every family,
every combination of the passes that apply, ONNX Runtime vs torch. `make fuzz` runs a long one
(tests/fuzz/run.py). MLPDEPLOY_FUZZ_CASES sets the budget here."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from mlpdeploy.passes.registry import PASSES

from ..fixtures.determinism_run import CASES
from .fuzz_harness import cases, chosen_combinations, combinations, run_case
from .fuzz_targets import NOT_YET_FUZZED, TARGETS

BUDGET = int(os.environ.get("MLPDEPLOY_FUZZ_CASES", "2"))


@settings(max_examples=BUDGET, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(spec=cases())
def test_every_pass_combination_matches_torch(spec):
    with tempfile.TemporaryDirectory(prefix="mlpdeploy-fuzz-") as tmp:
        result = run_case(spec, Path(tmp))
    assert not result.failures, f"{spec.to_json()}\n" + "\n".join(result.failures)


def test_every_registered_pass_is_fuzzed_and_checked_for_determinism():
    """A new pass adds one entry to fuzz_targets.TARGETS and one to tests/fixtures/determinism_run.py CASES."""
    assert set(TARGETS) | set(NOT_YET_FUZZED) == set(PASSES.names()), f"fuzz targets {sorted(TARGETS)} vs passes {PASSES.names()}"
    assert not set(TARGETS) & set(NOT_YET_FUZZED)
    assert set(CASES) == set(PASSES.names()), f"determinism cases {sorted(CASES)} vs passes {PASSES.names()}"


def test_capped_combinations_keep_each_pass_alone_and_the_whole_chain():
    passes = [[name, {}] for name in "abcdefg"]
    assert chosen_combinations(passes, None, 0) == combinations(passes) and len(combinations(passes)) == 128
    assert chosen_combinations(passes[:4], 16, 0) == combinations(passes[:4])  # 16 subsets: all of them
    capped = chosen_combinations(passes, 16, seed=3)
    assert len(capped) == 16 and capped == chosen_combinations(passes, 16, seed=3)
    assert [] in capped and passes in capped and all([p] in capped for p in passes)
    order = combinations(passes)
    assert [order.index(c) for c in capped] == sorted(order.index(c) for c in capped)  # subset order kept
    assert capped != chosen_combinations(passes, 16, seed=4)


def test_sparse_mlp_and_fp16_are_not_checked_together():
    passes = [["fuse-gated-mlp", {}], ["sparse-mlp", {"k": 1}], ["convert-precision", {"precision": "fp16"}]]
    chosen = chosen_combinations(passes, None, 0)
    assert len(chosen) == 6 and all({"sparse-mlp", "convert-precision"} - {n for n, _ in c} for c in chosen)
    assert [["sparse-mlp", {"k": 1}]] in chosen and [["convert-precision", {"precision": "fp16"}]] in chosen
