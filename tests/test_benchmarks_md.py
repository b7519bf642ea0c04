"""BENCHMARKS.md is rendered from the result files: every file a section, the headline comparisons as
tables; the committed page matches the committed results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mlpdeploy.benchmarks_md import load_results, render_benchmarks

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "bench"


def test_every_result_file_gets_a_dated_section_with_its_machine():
    results = load_results(FIXTURES)
    assert sorted(results) == ["decode.json", "gpu/w4a16_kernel.json", "roofline.json", "serve_load.json", "suite.json"]
    text = render_benchmarks(results)
    runs = text.split("## Runs", 1)[1].split("\n## ", 1)[0]
    for name in results:
        row = next(line for line in runs.splitlines() if f"`{name}`" in line)
        assert "2026-01-02" in row and ("Test CPU, 2 cores" in row or "Test GPU" in row), row
    assert "onnxruntime-genai 0.18.0" in runs and "commit abcdef123456" in runs
    # the headline benchmarks first, in the page's order; then the rest
    order = [text.index(title) for title in ("## Roofline", "## Workloads against every alternative", "## Decoding with a KV cache",
                                             "## Serving under load", "## GPU: W4A16MatMul")]
    assert order == sorted(order)


def test_suite_compares_every_alternative():
    text = render_benchmarks(load_results(FIXTURES))
    suite = text.split("## Workloads against every alternative", 1)[1].split("\n## ", 1)[0]
    for variant in ("torch eager", "torch.compile", "ort plain export", "ort + onnxscript fusions"):
        assert f"| {variant} |" in suite
    # mlpdeploy rows in bold with the best alternative's time over theirs
    assert "| llama-small | 1 | **mlpdeploy** | 1.5 | 1.65 | 1.067× vs ort + onnxscript fusions |" in suite
    assert "triad 24 GB/s" in suite and "torch.compile: compiled with the inductor backend" in suite


def test_decode_gives_ratios_against_genai_and_the_bandwidth_fraction():
    text = render_benchmarks(load_results(FIXTURES))
    decode = text.split("## Decoding with a KV cache", 1)[1].split("\n## ", 1)[0]
    assert "| **mlpdeploy** | 9 [30/32] | 9.9 [30/32] | 200 [30/32] |" in decode
    assert "| mlpdeploy | 1.111× vs genai fp32 | 1.111× vs genai fp32 | 1.25× vs genai fp32 |" in decode
    assert "| mlpdeploy | 88% | 86% |" in decode
    assert "- genai int4: not built in this fixture" in decode


def test_other_files_become_generic_tables():
    text = render_benchmarks(load_results(FIXTURES))
    serve = text.split("## Serving under load", 1)[1].split("\n## ", 1)[0]
    assert "| infer | mixer-tiny | 3900 | 130 | 59 | 160 | 300 |" in serve  # fields equal in every row go above the table
    assert "Every row: clients 8 · seconds 30 · wrong 0 · errors  · all_correct yes." in serve
    gpu = text.split("## GPU: W4A16MatMul", 1)[1]
    assert "| nvfp4 | 16 | 0.06 | 0.21 | 0.012 | 3.00e-04 |" in gpu


def test_a_layout_the_renderer_does_not_know_falls_back_to_generic_tables():
    text = render_benchmarks({"suite.json": {"benchmark": "suite", "date": "d", "variants": {"a": {"ms": 1.0}, "b": {"ms": 2.0}}}})
    assert "| variants | ms |" in text and "| b | 2 |" in text


def test_no_results_says_how_to_make_them():
    assert "No results committed yet: run `make bench`." in render_benchmarks({})


def test_the_script_writes_and_checks_the_page(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "roofline.json").write_text((FIXTURES / "roofline.json").read_text())
    page = tmp_path / "BENCHMARKS.md"
    script = [sys.executable, str(ROOT / "bench" / "benchmarks_md.py"), "--results", str(results), "-o", str(page)]
    assert subprocess.run(script, capture_output=True).returncode == 0
    assert "| 2 | 256 | 20 | 24 | 100 |" in page.read_text()
    assert subprocess.run([*script, "--check"], capture_output=True).returncode == 0
    data = json.loads((results / "roofline.json").read_text())
    (results / "roofline.json").write_text(json.dumps({**data, "triad_gb_s": 25.0}))
    check = subprocess.run([*script, "--check"], capture_output=True, text=True)
    assert check.returncode == 1 and "stale: run `make docs`" in check.stdout


def test_the_committed_page_matches_the_committed_results():
    expected = render_benchmarks(load_results(ROOT / "bench" / "results") if (ROOT / "bench" / "results").is_dir() else {})
    assert (ROOT / "BENCHMARKS.md").read_text() == expected, "BENCHMARKS.md is stale: run `make docs` (or `make bench` to measure again)"
