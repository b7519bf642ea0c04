"""report.html: the rewrite section from a real compile, self-containment, and (where Chromium is
installed: `make report-check`) a headless render to a non-blank screenshot."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess

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


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (`make report-check` installs it and runs this)")
def test_renders_in_headless_chromium(llama_report, tmp_path):
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"]
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", llama_report.as_uri()], check=True, timeout=120, capture_output=True)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == (1280, 2000)
    # a blank 1280×2000 page compresses to a few KB; tables, text and charts do not
    assert len(png) > 40_000, f"screenshot of {len(png)} bytes: the page rendered blank"
