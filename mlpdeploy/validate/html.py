"""The validation section of the compile report, in HTML (mlpdeploy.report's helpers): the verdict,
the task metric and top-1 agreement first, then the outputs folded per kind
(mlpdeploy.validate.summary), the inputs in one line and the per-layer errors."""

from __future__ import annotations

from mlpdeploy.html_parts import badge, escape, fmt, html_table
from mlpdeploy.validate.summary import percent, summarize
from mlpdeploy.validate.tolerance import ELEMENTWISE_CHECK


def validation_section(val: dict) -> list[str]:
    """HTML parts for one validation (a `ValidationReport.to_json()`)."""
    summary = summarize(val)
    parts = ["<h2>Validation</h2>", f"<p>{badge(summary.passed)} {escape(summary.detail)}.</p>"]
    if val.get("task"):
        task = val["task"]
        verdict = badge(task["passed"]) if "passed" in task else "no budget"
        row = [
            escape(task["metric"]), f'{task["reference"]:.6g}', f'{task["candidate"]:.6g}',
            f'{task["delta"]:+.3g} ({task["relative_delta"]:+.3%})', f'{task["agreement"]:.4%}', str(task["samples"]), verdict,
        ]
        parts += [
            f"<h3>Task metric: {escape(task['task'])}</h3>",
            html_table(["metric", "reference", "candidate", "delta", "top-1 agreement", "held-out samples", "verdict"], [row]),
        ]
    rows = []
    for row in summary.outputs:
        o = row.stats
        verdict = badge(row.passed) + (f" {row.failed} of {row.count}" if row.count > 1 and not row.passed else "")
        rows.append([escape(row.label), fmt(o["max_abs"]), fmt(o["mean_abs"]), _opt(o.get("scale")), _opt(o.get("atol")),
                     escape(percent(o.get("used"))), f'{o["cosine"]:.8f}', verdict])
    tolerance = val.get("tolerance") or {}
    parts += [
        "<h3>Outputs</h3>",
        html_table(["output", "max abs", "mean abs", "RMS(reference)", "atol", "of tolerance", "cosine", "verdict"], rows),
        f"<p>Tolerance: {escape(tolerance.get('description', ''))}; "
        f"{escape(tolerance.get('check', ELEMENTWISE_CHECK))}; numbered outputs of one kind are folded into one row showing the worst "
        "layer's numbers.</p>",
        f"<p>Reference {escape(val['reference'])} vs candidate {escape(val['candidate'])}, run as: {escape(val['executed'])}.</p>",
        f"<p>Inputs: {escape(summary.inputs)}.</p>",
    ]
    if val.get("note"):
        parts.append(f"<p><b>Note:</b> {escape(val['note'])}</p>")
    if val.get("reference_overrides"):
        edits = ", ".join(f"{k} → {v}" for k, v in val["reference_overrides"].items())
        parts.append(f"<p><b>Reference edited as the approximate rewrite computes:</b> {escape(edits)} (outputs and layers compared with "
                     "that torch model; the task metric's reference is the unedited model, so its delta is the cost of the approximation).</p>")
    for note in val.get("reference_edits") or []:  # what a pass declared its rewrite implies for the reference
        parts.append(f"<p><b>Reference:</b> {escape(note)}.</p>")
    if val.get("layers"):
        parts += _layers(val["layers"])
    return parts


def _opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _layers(layers: dict) -> list[str]:
    rows = [[escape(k), fmt(v["max_abs"]), fmt(v["mean_abs"]), escape(percent(v.get("used"))), f'{v["cosine"]:.8f}']
            for k, v in layers["errors"].items()]
    parts = [
        "<h3>Per layer</h3>",
        f"<p>Torch module outputs vs the same values in {escape(layers['model'])} (found through module scopes); reported, not judged: "
        "“of tolerance” is what the output tolerance rule would give each layer's output.</p>",
        _layer_chart(layers["errors"]),
        html_table(["layer", "max abs", "mean abs", "of tolerance", "cosine"], rows),
    ]
    if layers.get("skipped"):
        parts.append(html_table(["skipped", "reason"], [[escape(k), escape(v)] for k, v in layers["skipped"].items()], numeric_from=99))
    return parts


def _layer_chart(errors: dict[str, dict]) -> str:
    """Max abs error per layer on a log scale (1e-10 .. 1e1), in model order."""
    import math

    items = list(errors.items())
    if not items:
        return ""
    width, height, left, bottom = 640, 180, 50, 20
    step = (width - left - 10) / max(len(items), 1)
    lo, hi = -10.0, 1.0

    def y(v: float) -> float:
        exp = math.log10(max(v, 10**lo))
        return (height - bottom) * (1 - (min(exp, hi) - lo) / (hi - lo))

    bars = "".join(
        f'<rect x="{left + i * step:.1f}" y="{y(e["max_abs"]):.1f}" width="{max(step - 2, 1):.1f}" '
        f'height="{height - bottom - y(e["max_abs"]):.1f}" fill="#4a78b5"><title>{escape(name)}: {e["max_abs"]:.3e}</title></rect>'
        for i, (name, e) in enumerate(items)
    )
    ticks = "".join(
        f'<text x="0" y="{y(10.0**p) + 4:.1f}" font-size="11">1e{p}</text>'
        f'<line x1="{left}" x2="{width}" y1="{y(10.0**p):.1f}" y2="{y(10.0**p):.1f}" stroke="#ddd"/>'
        for p in (-10, -7, -4, -1)
    )
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="max abs error per layer">{ticks}{bars}'
        f'<text x="{left}" y="{height - 4}" font-size="11">layers in model order (hover for names)</text></svg>'
    )


