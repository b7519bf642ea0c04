"""Golden op counts (tinygrad's guardrail): every zoo model's op-type counts after export and
after each registered pass, diffed against the checked-in `golden/op_counts.json`, so a change
in what export or a pass produces shows up as a readable diff. `--update-golden` rewrites the
snapshot instead (the trained models are `slow`: add `-m slow` or `-m ''` to record them too)."""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlpdeploy.export import export_model
from mlpdeploy.model import load_model
from mlpdeploy.passes import PassSpec, available_passes, rewrite_model
from mlpdeploy.zoo import ZOO

GOLDEN = Path(__file__).parent / "golden" / "op_counts.json"
EXPORT = "export"  # the snapshot's key for the exported graph, before any pass
HOW_TO_UPDATE = "run `pytest tests/passes/test_golden_op_counts.py -m '' --update-golden` to record them"

MODELS = [pytest.param(name, marks=pytest.mark.slow) if entry.trained else name for name, entry in ZOO.items()]


def zoo_op_counts(model: str, workdir: Path) -> dict[str, dict[str, int]]:
    """{"export" or pass name: {op type: count}} for one zoo model, exported once."""
    exported = workdir / f"{model}.onnx"
    export_model(load_model(model), exported)
    counts: dict[str, dict[str, int]] = {}
    for name in available_passes():
        result = rewrite_model(exported, workdir / f"{model}.{name}.onnx", [PassSpec(name)])
        counts.setdefault(EXPORT, result.op_counts_before)
        counts[name] = result.op_counts_after
    return counts


def golden_diff(model: str, recorded: dict | None, actual: dict[str, dict[str, int]]) -> list[str]:
    """One line per difference, `model / stage: op old -> new`; an absent entry says how to record it."""
    if recorded is None:
        return [f"{model}: no golden op counts in {GOLDEN.name}; {HOW_TO_UPDATE}"]
    lines = []
    for stage in sorted(recorded.keys() | actual.keys()):
        if stage not in recorded:
            lines.append(f"{model} / {stage}: not in the snapshot; {HOW_TO_UPDATE}")
        elif stage not in actual:
            lines.append(f"{model} / {stage}: in the snapshot, but no such pass is registered any more")
        else:
            old, new = recorded[stage], actual[stage]
            for op in sorted(old.keys() | new.keys()):
                if old.get(op, 0) != new.get(op, 0):
                    lines.append(f"{model} / {stage}: {op} {old.get(op, 0)} -> {new.get(op, 0)}")
    return lines


def load_snapshot() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


@contextmanager
def editing_snapshot():
    """The snapshot as a dict to edit, written back sorted; locked, since xdist workers share it."""
    GOLDEN.parent.mkdir(exist_ok=True)
    fd = os.open(GOLDEN.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = load_snapshot()
        yield data
        tmp = GOLDEN.with_name(f".{GOLDEN.name}.tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, GOLDEN)
    finally:
        os.close(fd)


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


@pytest.mark.parametrize("model", MODELS)
def test_op_counts_match_the_snapshot(model, tmp_path, update_golden):
    actual = zoo_op_counts(model, tmp_path)
    if update_golden:
        with editing_snapshot() as data:
            data[model] = actual
        return
    diff = golden_diff(model, load_snapshot().get(model), actual)
    intended = "" if load_snapshot().get(model) is None else "\n(if the change is intended, rerun with --update-golden)"
    assert not diff, f"op counts differ from {GOLDEN}:\n" + "\n".join(diff) + intended


def test_snapshot_names_only_zoo_models(update_golden):
    if update_golden:
        with editing_snapshot() as data:
            for stale in set(data) - set(ZOO):
                del data[stale]
        return
    stale = sorted(set(load_snapshot()) - set(ZOO))
    assert not stale, f"{GOLDEN.name} has entries for models not in the zoo: {stale}; run with --update-golden to drop them"


# ------------------------------------------------------------------ the diff itself


COUNTS = {EXPORT: {"MatMul": 3, "Mul": 2}, "fuse-gated-mlp": {"MatMul": 1, "mlpdeploy::GatedMLP": 1}}


def test_diff_of_equal_counts_is_empty():
    assert golden_diff("llama-tiny", COUNTS, json.loads(json.dumps(COUNTS))) == []


def test_diff_names_model_stage_op_and_both_counts():
    recorded = {EXPORT: {"MatMul": 3, "Mul": 2}, "fuse-gated-mlp": {"MatMul": 3, "Mul": 2}}
    assert golden_diff("llama-tiny", recorded, COUNTS) == [
        "llama-tiny / fuse-gated-mlp: MatMul 3 -> 1",
        "llama-tiny / fuse-gated-mlp: Mul 2 -> 0",
        "llama-tiny / fuse-gated-mlp: mlpdeploy::GatedMLP 0 -> 1",
    ]


def test_diff_of_a_missing_model_says_to_run_with_update_golden():
    assert golden_diff("new-tiny", None, COUNTS) == [f"new-tiny: no golden op counts in op_counts.json; {HOW_TO_UPDATE}"]
    assert "--update-golden" in HOW_TO_UPDATE


def test_diff_of_a_new_or_removed_pass():
    recorded = {EXPORT: COUNTS[EXPORT], "old-pass": {"MatMul": 3}}
    assert golden_diff("llama-tiny", recorded, COUNTS) == [
        f"llama-tiny / fuse-gated-mlp: not in the snapshot; {HOW_TO_UPDATE}",
        "llama-tiny / old-pass: in the snapshot, but no such pass is registered any more",
    ]
