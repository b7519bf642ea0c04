"""Rich tables the commands print: the validation verdict, the task metric, outputs folded per kind, layers, bisect."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from mlpdeploy.validate.summary import failure, fold_outputs, percent, summarize  # noqa: F401 (failure: the closing FAIL line)
from mlpdeploy.validate.tolerance import ELEMENTWISE_CHECK

PASS, FAIL = "[green]PASS[/]", "[red]FAIL[/]"


def verdict(passed: bool | None) -> str:
    return "-" if passed is None else (PASS if passed else FAIL)


def validation_table(outputs: dict, title: str) -> Table:
    """One row per output, numbered outputs of one kind (present.*.key) folded into one row with its worst layer's numbers."""
    table = Table(title=title)
    for col in ("output", "worst layer", "max abs", "of tol", "cosine", "verdict"):
        table.add_column(col, justify="left" if col in ("output", "worst layer", "verdict") else "right", no_wrap=col == "output")
    outputs = {k: (o if isinstance(o, dict) else o.to_json()) for k, o in outputs.items()}
    for row in fold_outputs(outputs):
        o = row.stats
        verdict_cell = verdict(row.passed) if row.count == 1 or row.passed else f"{FAIL} {row.failed}/{row.count}"
        table.add_row(row.name, f"{row.worst} of {row.count}" if row.count > 1 else "", f"{o['max_abs']:.2e}",
                      percent(o.get("used")), f"{o['cosine']:.6f}", verdict_cell)
    return table


def layer_table(layers: dict, worst: int = 8) -> Table:
    """The layers with the largest errors against their tolerance (all of them when there are few)."""
    table = Table(title=f"per layer (worst {worst}, in {layers['model']}; reported, not judged)")
    for col in ("layer", "max abs", "mean abs", "of tol", "cosine"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    ranked = sorted(layers["errors"].items(), key=lambda kv: (-(kv[1].get("used") or 0.0), -kv[1]["max_abs"]))[:worst]
    for name, e in ranked:
        table.add_row(name, f"{e['max_abs']:.2e}", f"{e['mean_abs']:.2e}", percent(e.get("used")), f"{e['cosine']:.6f}")
    return table


def print_validation(console, validation: dict, title: str) -> None:
    """The verdict and the task metric first, then the outputs (folded per kind), the worst layers,
    what the inputs were and what ran."""
    summary = summarize(validation)
    console.print(f"{PASS if summary.passed else FAIL}: {escape(summary.detail)}")
    if summary.task:
        console.print(f"task: {summary.task}", markup=False)
    console.print(validation_table(validation["outputs"], title))
    if validation.get("layers", {}).get("errors"):
        console.print(layer_table(validation["layers"]))
    console.print(f"inputs: {summary.inputs}", markup=False)
    tolerance = validation.get("tolerance") or {}
    if tolerance:
        check = tolerance.get("check", ELEMENTWISE_CHECK)  # reports written before the int8 rule have no "check"
        console.print(f"tolerance: {tolerance['description']}; {check}", markup=False)
    console.print(f"ran: {validation['executed']}", markup=False)
    if validation.get("reference_overrides"):
        edits = ", ".join(f"{k} → {v}" for k, v in validation["reference_overrides"].items())
        console.print(f"reference: the torch model edited as the approximate rewrite computes ({edits}); "
                      "the task metric is the unedited model's", markup=False)
    for note in validation.get("reference_edits") or []:
        console.print(f"reference: {note}", markup=False)
    if validation.get("note"):
        console.print(f"note: {validation['note']}", markup=False)


def print_bisect(console, bisect: dict) -> None:
    """The first layer over tolerance (and the last one that matched), and what --reduce wrote."""
    first = bisect["first_diverging"]
    if first is None:
        console.print(f"bisect: every layer matches ({len(bisect['errors'])} compared in {bisect['model']})", markup=False)
    else:
        e = bisect["errors"][first]
        after = f", after {bisect['last_matching']}, which matches" if bisect["last_matching"] else " (the first layer compared)"
        console.print(f"bisect: first diverging layer {first}: max abs {e['max_abs']:.3e}, cosine {e['cosine']:.6f}{after}", markup=False)
    if "reduced" not in bisect:
        return
    r = bisect["reduced"]
    if r is None:
        console.print("reduce: no module scope is over tolerance; nothing written", markup=False)
        return
    console.print(f"reduce: {r['scope']} ({r['nodes']} of {r['graph_nodes']} nodes) → {r['model']}, inputs {r['inputs_json']}, "
                  f"torch output {r['reference_json']}; max abs {r['errors_reduced']['max_abs']:.3e} "
                  f"({'reproduces' if r['reproduces'] else 'does NOT reproduce'} the divergence)", markup=False)


def stages_table(stages: dict, memory: dict | None) -> Table:
    """Each stage (and its steps, indented): seconds and peak resident memory, also as a multiple
    of the weight bytes."""
    weights = (memory or {}).get("weights_mib")
    title = "stages" + (f" (weights {weights:,.0f} MiB; peak resident memory of this process)" if weights else "")
    table = Table(title=title)
    for col in ("stage", "seconds", "peak RSS MiB", "x weights"):
        table.add_column(col, justify="left" if col == "stage" else "right")

    def add(name: str, record: dict, depth: int) -> None:
        peak = record.get("peak_rss_mib")
        ratio = f"{peak / weights:.2f}" if peak is not None and weights else "-"
        label = ("  " * depth + name) if depth == 0 else f"[dim]{'  ' * depth}{name}[/]"
        table.add_row(label, f"{record.get('seconds', 0):.1f}", f"{peak:,.0f}" if peak is not None else "-", ratio)
        for child, sub in record.get("steps", {}).items():
            add(child, sub, depth + 1)

    for name, record in stages.items():
        add(name, record, 0)
    return table
