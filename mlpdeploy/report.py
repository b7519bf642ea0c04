"""A self-contained HTML page for a compile report (inline CSS and SVG, no external assets)."""

from __future__ import annotations

import json

from mlpdeploy.html_parts import CSS, badge, bar_chart, escape, html_table
from mlpdeploy.passes.pipeline import spec_text


def _stage_chart(stages: dict[str, dict]) -> str:
    """Horizontal SVG bars of seconds per stage."""
    return bar_chart([(name, float(info.get("seconds", 0.0)), False) for name, info in stages.items()], "s", "seconds per stage", "{:.2f}")


def _heatmap(chart: dict) -> str:
    """A rows × columns grid of values (e.g. layer × format relative metric degradation): white at
    zero or better, deeper red up to the largest value, each cell labelled."""
    rows, columns, values = chart["rows"], chart["columns"], chart["values"]
    if not rows or not columns:
        return ""
    label_w, cell_w, cell_h, top = 8 + 7 * max(len(str(r)) for r in rows), 92, 18, 22
    peak = max((v for row in values for v in row if v is not None and v > 0), default=0.0) or 1.0
    cells = []
    for j, col in enumerate(columns):
        cells.append(f'<text x="{label_w + j * cell_w + cell_w / 2:.0f}" y="14" font-size="12" text-anchor="middle">{escape(col)}</text>')
    for i, (row, row_values) in enumerate(zip(rows, values)):
        y = top + i * cell_h
        cells.append(f'<text x="0" y="{y + 13}" font-size="11">{escape(row)}</text>')
        for j, v in enumerate(row_values):
            share = 0.0 if v is None else max(0.0, min(1.0, v / peak))
            fill = f"rgb(255,{int(255 - 200 * share)},{int(255 - 200 * share)})"
            text = "-" if v is None else f"{v:+.2%}"
            x = label_w + j * cell_w
            cells.append(f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" fill="{fill}" stroke="#ddd">'
                         f'<title>{escape(row)} × {escape(columns[j])}: {text}</title></rect>'
                         f'<text x="{x + cell_w / 2 - 1:.0f}" y="{y + 12}" font-size="10" text-anchor="middle">{text}</text>')
    width, height = label_w + cell_w * len(columns), top + cell_h * len(rows) + 20
    caption = f'<text x="0" y="{height - 4}" font-size="11">{escape(chart.get("label", ""))}</text>'
    return f'<svg width="{width}" height="{height}" role="img" aria-label="{escape(chart.get("label", "heat map"))}">{"".join(cells)}{caption}</svg>'


def _curve_chart(chart: dict) -> str:
    """A line through the accepted points (x, y), rejected tries as red dots, the budget's limit dashed."""
    points = [(float(x), float(y), bool(ok)) for x, y, ok in chart["points"]]
    if not points:
        return ""
    width, height, left, bottom, top = 640, 220, 60, 34, 10
    limit = chart.get("limit")
    ys = [y for _, y, _ in points] + ([limit] if limit is not None else [])
    lo, hi = min(ys), max(ys)
    hi = hi if hi > lo else lo + 1.0
    x_max = max(max(x for x, _, _ in points), 1.0)

    def sx(x: float) -> float:
        return left + (width - left - 20) * x / x_max

    def sy(y: float) -> float:
        return top + (height - top - bottom) * (1 - (y - lo) / (hi - lo))

    kept = [(x, y) for x, y, ok in points if ok]
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in kept)
    dots = "".join(
        f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="{"#4a78b5" if ok else "#c62828"}"><title>{x:g} dropped: {y:.5g}'
        f'{"" if ok else " (over budget, not kept)"}</title></circle>'
        for x, y, ok in points
    )
    budget = (f'<line x1="{left}" x2="{width}" y1="{sy(limit):.1f}" y2="{sy(limit):.1f}" stroke="#2e7d32" stroke-dasharray="5,4"/>'
              f'<text x="{width - 4}" y="{sy(limit) - 4:.1f}" font-size="11" text-anchor="end">budget</text>') if limit is not None else ""
    axes = (f'<text x="0" y="{sy(hi) + 4:.1f}" font-size="11">{hi:.4g}</text><text x="0" y="{sy(lo) + 4:.1f}" font-size="11">{lo:.4g}</text>'
            f'<line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" stroke="#999"/>'
            f'<line x1="{left}" x2="{width}" y1="{height - bottom}" y2="{height - bottom}" stroke="#999"/>'
            + "".join(f'<text x="{sx(t):.1f}" y="{height - bottom + 14}" font-size="11" text-anchor="middle">{t}</text>'
                      for t in range(int(x_max) + 1)))
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="{escape(chart["y"])} vs {escape(chart["x"])}">{axes}{budget}'
        f'<polyline points="{line}" fill="none" stroke="#4a78b5" stroke-width="2"/>{dots}'
        f'<text x="{left}" y="{height - 4}" font-size="11">{escape(chart["x"])}; y: {escape(chart["y"])}</text></svg>'
    )


def _settings(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items() if not isinstance(v, (dict, list)) or v)
    return str(value)


def _stage_rows(stages: dict, depth: int = 0) -> list[list[str]]:
    """One row per stage and, indented under it, its steps: seconds and peak resident memory."""
    rows = []
    for name, info in stages.items():
        peak = info.get("peak_rss_mib")
        rows.append(["&nbsp;" * 4 * depth + escape(name), f'{info.get("seconds", 0):.3f}', f"{peak:,.0f}" if peak is not None else "-"])
        rows += _stage_rows(info.get("steps", {}), depth + 1)
    return rows


def _rewrite_section(stages: dict) -> list[str]:
    """Each pass (and the backend's own fusions): the sites it rewrote, those it skipped and why,
    and the op-type counts that changed."""
    rewrite, build = stages.get("rewrite") or {}, stages.get("build") or {}
    passes = [(spec_text(info), info) for info in rewrite.get("passes") or []]  # in the order they ran
    fusions = build.get("fusions") or {}
    if fusions.get("rewritten") or fusions.get("skipped"):  # the backend's fusion pass, when it changed or declined something
        passes.append((f"{fusions.get('pass', 'ort-decoder')} (at build)", fusions))
    parts = ["<h2>Rewrite</h2>"]
    if not passes:
        parts.append("<p>No rewrite pass ran: the built graph is the export (plus the backend's own optimizations).</p>")
    for name, info in passes:
        sites = info.get("sites") or info.get("dropped") or {}
        extra = {k: v for k, v in info.items() if k in ("fusions", "shared_cache_buffer", "module_overrides")}
        parts.append(f"<h3>{escape(name)}: {info.get('rewritten', len(sites))} rewritten, {len(info.get('skipped') or {})} skipped</h3>")
        if sites:
            parts.append(html_table(["site (module scope)", "what"], [[escape(k), escape(_settings(v))] for k, v in sites.items()], numeric_from=99))
        if info.get("skipped"):
            parts.append(html_table(["skipped", "why"], [[escape(k), escape(v)] for k, v in info["skipped"].items()], numeric_from=99))
        if extra:
            parts.append(f"<p>{escape(_settings(extra))}</p>")
    before, after = rewrite.get("op_counts_before") or {}, rewrite.get("op_counts_after") or {}
    changed = [[escape(op), before.get(op, 0), after.get(op, 0), f"{after.get(op, 0) - before.get(op, 0):+d}"]
               for op in sorted(set(before) | set(after)) if before.get(op, 0) != after.get(op, 0)]
    if changed:
        parts += ["<h3>Op types the passes changed</h3>", html_table(["op type", "export", "rewritten", "change"], changed)]
    return parts


def render_html(report: dict, validation: list[str]) -> str:
    """The compile report as one HTML page; `validation` is its validation section
    (`mlpdeploy.validate.html.validation_section`)."""
    parts = [
        f"<h1>mlpdeploy compile: {escape(report['model'])} {badge(report['passed'])}</h1>",
        f"<p>{escape(report['kind'])} model, {report['parameters']:,} parameters.</p>",
        *validation,
    ]
    if report.get("plan"):
        plan = report["plan"]
        parts += [
            "<h2>Plan</h2>",
            f"<p>From {escape(plan['source'])}: analyses {escape(', '.join(plan['analyses']))}; calibration {plan['calibration']['samples']} "
            f"samples from {escape(plan['calibration']['source'])}; passes {escape(', '.join(plan['passes']) or 'none')}.</p>",
        ]
        if plan.get("budget"):
            b = plan["budget"]
            amount = f"{b['max_delta']:.3%} of the {b['metric']}" if b.get("relative") else f"{b['max_delta']:g} {b['metric']}"
            parts.append(f"<p>Budget: {escape(amount)}.</p>")
        if plan.get("predicted"):
            parts.append(html_table(["predicted", "value"], [[escape(k), escape(v)] for k, v in plan["predicted"].items()], numeric_from=99))
        for table in plan.get("tables", []):
            parts.append(f"<h3>{escape(table['title'])}</h3>")
            if table.get("heatmap"):
                parts.append(_heatmap(table["heatmap"]))
            parts.append(html_table(table["columns"], [[escape(c) for c in row] for row in table["rows"]]))
            if table.get("chart"):
                parts.append(_curve_chart(table["chart"]))
    parts += _rewrite_section(report["stages"])
    parts += [
        "<h2>Stages</h2>",
        _stage_chart(report["stages"]),
        html_table(["stage", "seconds", "peak RSS MiB"], _stage_rows(report["stages"])),
        *([f"<p>Peak resident memory {m['peak_rss_mib']:,.0f} MiB (in {escape(m['peak_stage'])}), "
           f"{m.get('peak_over_weights', 0):.2f}&times; the {m['weights_mib']:,.0f} MiB of weights.</p>"] if (m := report.get("memory")) and m.get("peak_stage") else []),
        "<h2>Artifacts</h2>",
        html_table(["artifact", "path"], [[escape(k), escape(v)] for k, v in report["artifacts"].items()], numeric_from=99),
        "<h2>Environment</h2>",
        html_table(["what", "version"], [[escape(k), escape(v)] for k, v in report["environment"].items()], numeric_from=99),
        "<h2>Full report</h2>",
        f"<pre>{escape(json.dumps(report, indent=2))}</pre>",
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>mlpdeploy: {escape(report['model'])}</title><style>{CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
