"""Differential fuzzing at a fixed budget (part of `make test`): random models from every family,
every combination of the passes that apply, ONNX Runtime vs torch. `make fuzz` runs a long one
(tests/fuzz/run.py). MLPDEPLOY_FUZZ_CASES sets the budget here."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fuzz_harness import cases, run_case
from hypothesis import HealthCheck, given, settings

BUDGET = int(os.environ.get("MLPDEPLOY_FUZZ_CASES", "3"))


@settings(max_examples=BUDGET, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(spec=cases())
def test_every_pass_combination_matches_torch(spec):
    with tempfile.TemporaryDirectory(prefix="mlpdeploy-fuzz-") as tmp:
        result = run_case(spec, Path(tmp))
    assert not result.failures, f"{spec.to_json()}\n" + "\n".join(result.failures)
