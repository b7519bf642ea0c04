"""The quantize-weights fuzz target checks something: with the reference it builds (the torch model
with the same codes, int8 activations at accuracy level 4) each format passes; with a wrong
reference — the unquantized torch model — the same cases fail at the tolerance they are judged at."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest

from .fuzz_families import CaseSpec
from .fuzz_harness import TOLERANCE, run_case
from .fuzz_quant import quant_precision
from .fuzz_targets import TARGETS

GATED = {"act": "silu", "bias": True, "cut": "chunk", "depth": 2, "dim": 13, "head": True, "hidden": 17, "layout": "separate",
         "norm": "rms", "post": False}
OPTIONS = [
    {"format": "int4", "block": 32, "accuracy_level": 0, "scope": "*"},
    {"format": "int4asym", "block": 64, "accuracy_level": 4, "scope": "*"},
    {"format": "int4", "block": 128, "accuracy_level": 2, "scope": "*mlp*"},
    {"format": "nvfp4", "block": 16, "accuracy_level": 4, "scope": "*", "fp4_form": "nbits8"},
    {"format": "nvfp4", "block": 16, "accuracy_level": 0, "scope": "*", "fp4_form": "function"},
    {"format": "mxfp4", "block": 32, "accuracy_level": 4, "scope": "*", "fp4_form": "auto"},
]


def _run(options: dict, fuse: bool):
    passes = ([["fuse-gated-mlp", {}]] if fuse else []) + [["quantize-weights", options]]
    spec = CaseSpec("gated", GATED, seed=7, shapes=[{"batch": 1, "seq": 5}, {"batch": 3, "seq": 2}], passes=passes)
    with tempfile.TemporaryDirectory(prefix="mlpdeploy-fuzz-") as tmp:
        return run_case(spec, Path(tmp))


FAST = {(1, True), (4, False)}  # in `make test`: INT4 asym at level 4 after fuse-gated-mlp, NVFP4 as the function on the linears
CASES = [pytest.param(options, fuse, id=f"{options['format']}-{options['block']}-level{options['accuracy_level']}-{'gated-mlp' if fuse else 'linears'}",
                      marks=() if (i, fuse) in FAST else pytest.mark.slow)
         for i, options in enumerate(OPTIONS) for fuse in (False, True)]


@pytest.mark.parametrize("options, fuse", CASES)
def test_quantized_reference_passes_and_unquantized_one_is_caught(options, fuse, monkeypatch):
    result = _run(options, fuse)
    assert not result.failures, "\n".join(result.failures)
    report = list(result.reports.values())[-1][-1]  # the whole combination's quantize-weights report
    assert report["rewritten"] >= (2 if options["scope"] == "*mlp*" else 5), report  # 2 MLPs (+ head) quantized
    if fuse:
        assert any(site.endswith("gate_up") for site in report["sites"])
    # the same cases, judged against the torch model without the quantization: caught
    monkeypatch.setitem(TARGETS, "quantize-weights", dataclasses.replace(TARGETS["quantize-weights"], edit_reference=None))
    wrong = _run(options, fuse)
    assert wrong.failures and all("max error" in f for f in wrong.failures), wrong.failures
    assert all(f"({quant_precision(options)})" in f for f in wrong.failures)


def test_int8_tolerance_sits_between_fp32_and_fp16():
    assert TOLERANCE["fp32"] < TOLERANCE["int8"] < TOLERANCE["fp16"]
    assert quant_precision({"accuracy_level": 4}) == "int8" and quant_precision({"accuracy_level": 0}) == "fp32"
