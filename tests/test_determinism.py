"""Determinism: the same inputs give byte-identical ONNX files and identical plans — exported,
rewritten by every registered pass, built by ONNX Runtime, analyzed — across two interpreters with
different hash seeds (so no set or dict order, object id or clock leaks into names or order).
Manifests and reports differ only in their recorded timings, and are not compared. Slow: two fresh
interpreters export three models each (`make test-slow`)."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .fixtures.determinism_run import CASES

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of tests/fixtures/determinism_run.py, PYTHONHASHSEED 1 and 2, side by side."""
    dirs = [tmp_path_factory.mktemp(f"run{seed}") for seed in (1, 2)]
    procs = [subprocess.Popen([sys.executable, str(FIXTURES / "determinism_run.py"), str(d)],
                              env={**os.environ, "PYTHONHASHSEED": str(seed)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for seed, d in zip((1, 2), dirs)]
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out.decode()[-3000:]
    return dirs


@pytest.mark.parametrize("name", sorted(CASES))
def test_pass_output_is_byte_identical(runs, name):
    a, b = (d / f"{name}.onnx" for d in runs)
    assert a.stat().st_size > 0 and filecmp.cmp(a, b, shallow=False), f"{name}: the two rewrites differ"


def test_exports_and_build_are_byte_identical(runs):
    names = sorted(p.name for p in runs[0].iterdir() if p.name.startswith("export-") and p.suffix == ".onnx") + ["built.ort.onnx"]
    assert len(names) >= 4
    for name in names:
        assert filecmp.cmp(runs[0] / name, runs[1] / name, shallow=False), f"{name} differs"


def test_plans_are_identical(runs):
    a, b = (json.loads((d / "plan.json").read_text()) for d in runs)
    assert a == b and a["analyses"]["redundancy"] and a["analyses"]["layer-stats"]


def test_draft_heads_are_byte_identical(runs):
    """Training draft heads (rollouts, slice, AdamW) in two interpreters gives the same file."""
    a, b = (d / "heads" / "plan.draft-heads.safetensors" for d in runs)
    assert filecmp.cmp(a, b, shallow=False)
