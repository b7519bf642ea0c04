"""report.html: the rewrite section from a real compile, self-containment, and (where Chromium is
installed: `make report-check`) a headless render to a non-blank screenshot."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mlpdeploy.compile import CompileOptions, compile_model
from mlpdeploy.passes import PassSpec


@pytest.fixture(scope="module")
def llama_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "llama"
    passes = [PassSpec("fuse-gated-mlp"), PassSpec("drop-layers", {"attention": 1})]
    report = compile_model("llama-tiny", out, CompileOptions(passes=passes, task_limit=8))
    assert report["passed"]
    return out / "report.html"


def test_rewrite_section_names_sites_and_op_changes(llama_report):
    page = llama_report.read_text()
    section = page[page.index("<h2>Rewrite</h2>"):page.index("<h2>Stages</h2>")]
    assert "fuse-gated-mlp: 2 rewritten, 0 skipped" in section
    assert "<td>layers.0.mlp</td><td>activation=silu, form=separate, hidden=176</td>" in section
    assert "drop-layers:attention=1: 1 rewritten" in section and "<td>layers.1.self_attn</td>" in section
    assert re.search(r"<td>mlpdeploy::GatedMLP</td><td class=\"num\">0</td><td class=\"num\">2</td><td class=\"num\">\+2</td>", section)
    assert re.search(r"<td>Softmax</td><td class=\"num\">2</td><td class=\"num\">1</td><td class=\"num\">-1</td>", section)


def test_no_pass_says_so(tiny_spec, tmp_path):
    compile_model(tiny_spec, tmp_path / "out", CompileOptions(task_limit=8))
    assert "No rewrite pass ran" in (tmp_path / "out" / "report.html").read_text()


def test_page_is_self_contained(llama_report):
    page = llama_report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the report must not fetch anything"
    assert "<script" not in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _suite_row(variant: str, ms: float, best_ms: float) -> dict:
    return {"workload": "vit-small", "batch": 1, "variant": variant, "p50_ms": ms, "p90_ms": ms * 1.1, "clean": "20/20",
            "best_alternative": "ort plain export", "vs_best": best_ms / ms, "mib": 84.0, "peak_mib": 120.0, "quality": ""}


BENCH_RESULTS = {
    "suite": {"threads": 2, "roofline": {"triad_gb_s": 19.0, "matmul_gflop_s": 80.0},
              "rows": [_suite_row("torch eager", 9.0, 3.0), _suite_row("ort plain export", 3.0, 3.0), _suite_row("mlpdeploy", 2.5, 3.0)]},
    "decode": {"anchor": {"kv_heads": 16, "threads": 2}, "results": {"context 16": {
        name: {"decode": {"p50_ms": ms, "p90_ms": ms, "samples": 8, "clean": 8}, "prefill": {"p50_ms": 1.0, "p90_ms": 1.0, "samples": 1, "clean": 1}}
        for name, ms in (("mlpdeploy", 10.8), ("genai int4", 3.8))}}},
}


@pytest.fixture
def bench_page(tmp_path) -> Path:
    from mlpdeploy.report_bench import render_bench_html

    page = tmp_path / "bench.html"
    page.write_text(render_bench_html(BENCH_RESULTS["suite"], BENCH_RESULTS["decode"], {"cpu": "test"}))
    return page


def test_bench_page_compares_against_the_alternatives(bench_page):
    page = bench_page.read_text()
    assert "1.20× vs ort plain export" in page  # 3.0 / 2.5: mlpdeploy's ratio against the best alternative
    assert page.count("<rect") == 5  # three suite bars and two decode bars
    assert page.count('fill="#2e7d32"') == 2  # mlpdeploy's bars (suite and decode) stand out
    assert "peak MiB" in page and ">120<" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page) and "<script" not in page


def test_bench_report_script_refuses_without_results(tmp_path):
    script = Path(__file__).parents[1] / "bench" / "report.py"
    done = subprocess.run([sys.executable, str(script), "--suite", str(tmp_path / "none.json"), "--decode", str(tmp_path / "none2.json"),
                           "-o", str(tmp_path / "r.html")], capture_output=True, text=True)
    assert done.returncode == 2 and "run bench/suite.py and bench/decode.py first" in done.stdout
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (`make report-check` installs it and runs this)")
@pytest.mark.parametrize("which", ["compile", "bench"])
def test_renders_in_headless_chromium(which, request, tmp_path):
    page = request.getfixturevalue("llama_report" if which == "compile" else "bench_page")
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"]
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", page.as_uri()], check=True, timeout=120, capture_output=True)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1280, 2000)
    # a blank 1280×2000 page compresses to a few KB; tables, text and charts do not
    assert len(png) > (40_000 if which == "compile" else 15_000), f"screenshot of {len(png)} bytes: the page rendered blank"
