"""HTML building blocks shared by the compile report, its validation section and the bench report:
inline CSS, escaping, PASS/FAIL badges, tables and SVG bar charts (no dependencies, no files)."""

from __future__ import annotations

import html

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:72rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#fff;background:#2e7d32;padding:.15rem .5rem;border-radius:.3rem}
.fail{color:#fff;background:#c62828;padding:.15rem .5rem;border-radius:.3rem}
pre{background:#f6f6f6;padding:.6rem;overflow:auto;font-size:.8rem}
"""


def escape(value) -> str:
    return html.escape(str(value))


def badge(passed: bool) -> str:
    return f'<span class="{"pass" if passed else "fail"}">{"PASS" if passed else "FAIL"}</span>'


def html_table(headers: list[str], rows: list[list], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = ""
    for row in rows:
        cells = "".join(
            f'<td class="num">{cell}</td>' if i >= numeric_from else f"<td>{cell}</td>" for i, cell in enumerate(row)
        )
        body += f"<tr>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def bar_chart(bars: list[tuple[str, float, bool]], unit: str, label: str, value_format: str = "{:.3g}") -> str:
    """Horizontal SVG bars (name, value, highlighted) scaled to the largest value; highlighted bars in green."""
    bars = [(n, v, hi) for n, v, hi in bars if v is not None]
    if not bars:
        return ""
    longest = max(v for _, v, _ in bars) or 1.0
    bar_h, width, label_w = 20, 640, max(90, min(250, 7 * max(len(n) for n, _, _ in bars)))
    rows = []
    for i, (name, value, highlighted) in enumerate(bars):
        y = i * (bar_h + 5)
        w = max(1.0, (width - label_w - 90) * value / longest)
        rows.append(
            f'<text x="0" y="{y + 14}" font-size="12">{escape(name)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{"#2e7d32" if highlighted else "#4a78b5"}"/>'
            f'<text x="{label_w + w + 5:.1f}" y="{y + 14}" font-size="11">{value_format.format(value)} {escape(unit)}</text>'
        )
    return f'<svg width="{width}" height="{len(bars) * (bar_h + 5)}" role="img" aria-label="{escape(label)}">{"".join(rows)}</svg>'


def fmt(x: float) -> str:
    return f"{x:.3e}" if isinstance(x, float) else escape(x)
