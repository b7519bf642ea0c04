"""A 30-layer decoder's validation reads well: verdict and task line first, the 60 present.* outputs
folded into one row per kind naming the worst layer, the inputs in one line (CLI and HTML)."""

from __future__ import annotations

import io
import re

from rich.console import Console

from mlpdeploy.cli.tables import print_validation
from mlpdeploy.validate.html import validation_section
from mlpdeploy.validate.summary import fold_outputs, fold_shapes, summarize

LAYERS = 30


def _stats(used: float, passed: bool | None = None, max_abs: float | None = None) -> dict:
    return {"max_abs": max_abs if max_abs is not None else used * 1e-3, "max_rel": 1e-4, "mean_abs": used * 1e-4, "cosine": 1.0,
            "shape": [2, 3, 64, 64], "passed": used <= 1.0 if passed is None else passed, "scale": 1.0, "atol": 1e-3, "rtol": 1e-3,
            "used": used, "feed": "prefill"}


def _validation(bad_layer: int | None = None) -> dict:
    outputs = {"logits": _stats(0.02)}
    for i in range(LAYERS):
        outputs[f"present.{i}.key"] = _stats(12.5 if i == bad_layer else 0.001 * (i + 1))
        outputs[f"present.{i}.value"] = _stats(0.003 if i != 17 else 0.05)
    past = {f"past_key_values.{i}.{k}": [2, 3, 64, 64] for i in range(LAYERS) for k in ("key", "value")}
    feeds = [{"name": "prefill", "shapes": {"input_ids": [2, 64], "attention_mask": [2, 64], "position_ids": [2, 64],
                                            **{k: [2, 3, 0, 64] for k in past}}},
             {"name": "decode", "shapes": {"input_ids": [2, 1], "attention_mask": [2, 65], "position_ids": [2, 1], **past}}]
    return {
        "reference": "smollm2", "candidate": "model.ort.onnx", "executed": "ONNX Runtime (CPU) on model.ort.onnx",
        "passed": bad_layer is None, "outputs": outputs, "inputs": feeds[0]["shapes"],
        "tolerance": {"rule": "scaled", "precision": "fp32", "rtol": 1e-3, "atol_rms": 1e-3,
                      "description": "atol 0.001 × RMS(reference) per output, rtol 0.001 (fp32)"},
        "input_data": {"source": "2 held-out windows of data:notes.jsonl: a prefill of 64 tokens, then a decode step of 1", "generated": False,
                       "feeds": feeds},
        "task": {"task": "data:notes.jsonl", "metric": "perplexity", "reference": 12.39, "candidate": 12.40, "delta": 0.01,
                 "relative_delta": 0.01 / 12.39, "agreement": 0.9961, "samples": 64, "executed": "ONNX Runtime"},
    }


def test_sixty_present_outputs_fold_into_two_rows_naming_the_worst_layer():
    rows = fold_outputs(_validation(bad_layer=12)["outputs"])
    assert [r.name for r in rows] == ["logits", "present.*.key", "present.*.value"]
    key, value = rows[1], rows[2]
    assert key.count == LAYERS and key.worst == "12" and key.stats["used"] == 12.5 and key.failed == 1 and key.passed is False
    assert value.worst == "17" and value.failed == 0 and value.passed is True
    assert rows[0].count == 1 and rows[0].passed is True


def test_verdict_and_task_come_first():
    good = summarize(_validation())
    assert good.headline.startswith("PASS: 61 outputs within tolerance") and "worst present.*.value at layer 17" in good.headline
    assert good.task.startswith("perplexity 12.39 → 12.4 (+0.081%), top-1 agreement 99.61% on 64 held-out samples")
    bad = summarize(_validation(bad_layer=12))
    assert bad.headline.startswith("FAIL: outputs drifted past tolerance (1 of 30 present.*.key)")
    assert "worst present.*.key at layer 12: max abs 0.0125, 1,250% of its tolerance" in bad.headline


def test_inputs_read_in_one_line():
    text = summarize(_validation()).inputs
    assert text.count("past_key_values") == 2  # one folded entry per feed, not 60
    assert "prefill: input_ids [2, 64], attention_mask [2, 64], position_ids [2, 64], past_key_values.*.{key,value} ×30 [2, 3, 0, 64]" in text
    assert "decode: input_ids [2, 1]" in text and text.startswith("2 held-out windows of data:notes.jsonl")
    assert fold_shapes({"a.1.x": [1], "a.2.x": [2]}) == "a.*.x ×2 shapes vary"


def test_cli_prints_the_verdict_first_and_a_short_table():
    out = io.StringIO()
    print_validation(Console(file=out, width=100), _validation(bad_layer=12), "smollm2")
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0].startswith("FAIL: outputs drifted") and text.index("task: perplexity") < text.index("┏")
    assert "present.*.key" in text and "12 of 30" in text and "present.3.key" not in text
    assert len([line for line in lines if line.startswith("│")]) == 3  # logits, present.*.key, present.*.value
    assert text.count("past_key_values") == 2


def test_html_section_folds_the_outputs():
    html = "".join(validation_section(_validation(bad_layer=12)))
    assert html.index("FAIL") < html.index("Task metric") < html.index("<h3>Outputs</h3>")
    outputs_table = html[html.index("<h3>Outputs</h3>"):html.index("Tolerance:")]
    assert len(re.findall("<tr>", outputs_table)) == 4  # the header and three rows
    assert "present.*.key (×30, worst: layer 12)" in outputs_table and "1 of 30" in outputs_table
    assert html.count("past_key_values") == 2
