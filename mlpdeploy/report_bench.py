"""A self-contained HTML page for benchmark results: latency, size and memory against the alternatives.

Reads the JSON that bench/suite.py (`suite`) and bench/decode.py (`decode`) write; either may be
missing. Inline CSS and SVG only, like the compile report (mlpdeploy/report.py).
"""

from __future__ import annotations

from mlpdeploy.html_parts import CSS, bar_chart, escape, html_table


def _suite_section(suite: dict) -> list[str]:
    roof = suite.get("roofline", {})
    parts = ["<h2>Workloads (bench/suite.py)</h2>",
             f"<p>{suite.get('threads', '?')} threads; triad bandwidth {roof.get('triad_gb_s', 0):.1f} GB/s, fp32 matmul "
             f"{roof.get('matmul_gflop_s', 0):.0f} GFLOP/s. Bars: median ms (shorter is better), mlpdeploy in green. "
             "× best alternative above 1 means mlpdeploy is ahead.</p>"]
    groups: dict[tuple[str, int], list[dict]] = {}
    for row in suite.get("rows", []):
        groups.setdefault((row["workload"], row["batch"]), []).append(row)
    for (workload, batch), rows in groups.items():
        parts.append(f"<h3>{escape(workload)}, batch {batch}</h3>")
        parts.append(bar_chart([(r["variant"], r["p50_ms"], r["variant"].startswith("mlpdeploy")) for r in rows], "ms",
                               f"{workload} batch {batch} latency"))
        table = []
        for r in rows:
            ratio = f"{r['vs_best']:.2f}× vs {r['best_alternative']}" if r["variant"].startswith("mlpdeploy") else f"{r['vs_best']:.2f}×"
            peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") is not None else "–"
            table.append([escape(r["variant"]), f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}", escape(ratio), f"{r['mib']:.1f}",
                          peak, escape(r.get("quality", ""))])
        parts.append(html_table(["variant", "p50 ms", "p90 ms", "× best alternative", "model MiB", "peak MiB", "quality"], table))
    return parts


def _decode_section(decode: dict) -> list[str]:
    parts = ["<h2>Decoding with a KV cache (bench/decode.py)</h2>",
             f"<p>Anchor-shaped decoder: {escape(', '.join(f'{k} {v}' for k, v in decode.get('anchor', {}).items()))}. Bars: median ms per token (decode) and "
             "ms per prompt (prefill); mlpdeploy in green.</p>"]
    for context, variants in decode.get("results", {}).items():
        phase = "prefill" if context.startswith("prefill") else "decode"
        parts.append(f"<h3>{escape(context)}: {phase}</h3>")
        parts.append(bar_chart([(name, v[phase]["p50_ms"], name.startswith("mlpdeploy")) for name, v in variants.items()],
                               "ms", f"{context} {phase}"))
        rows = [[escape(name), f"{v[phase]['p50_ms']:.3f}", f"{v[phase]['p90_ms']:.3f}", f"{v[phase]['clean']}/{v[phase]['samples']}"]
                for name, v in variants.items()]
        parts.append(html_table(["variant", "p50 ms", "p90 ms", "clean samples"], rows))
    return parts


def render_bench_html(suite: dict | None, decode: dict | None, machine: dict | None = None) -> str:
    """The benchmark results as one HTML page."""
    parts = ["<h1>mlpdeploy benchmarks</h1>"]
    if machine:
        parts.append(html_table(["what", "value"], [[escape(k), escape(v)] for k, v in machine.items()], numeric_from=99))
    if suite:
        parts += _suite_section(suite)
    if decode:
        parts += _decode_section(decode)
    if not suite and not decode:
        parts.append("<p>No results yet: run <code>make bench</code>.</p>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>mlpdeploy benchmarks</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
