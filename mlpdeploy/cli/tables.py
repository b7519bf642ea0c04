"""Rich tables the commands print: validation per output, per layer, the task metric, passes."""

from __future__ import annotations

from rich.table import Table

PASS, FAIL = "[green]PASS[/]", "[red]FAIL[/]"


def verdict(passed: bool | None) -> str:
    return "-" if passed is None else (PASS if passed else FAIL)


def validation_table(outputs: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("output", "max abs", "max rel", "mean abs", "cosine", "verdict"):
        table.add_column(col, justify="left" if col in ("output", "verdict") else "right")
    for name, o in outputs.items():
        o = o if isinstance(o, dict) else o.to_json()
        table.add_row(name, f"{o['max_abs']:.3e}", f"{o['max_rel']:.3e}", f"{o['mean_abs']:.3e}", f"{o['cosine']:.8f}", verdict(o["passed"]))
    return table


def task_table(task: dict) -> Table:
    table = Table(title=f"task {task['task']} ({task['samples']} eval samples)")
    for col in ("metric", "reference", "candidate", "delta", "top-1 agreement", "verdict"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    table.add_row(
        task["metric"], f"{task['reference']:.4f}", f"{task['candidate']:.4f}",
        f"{task['delta']:+.4g} ({task['relative_delta']:+.3%})", f"{task['agreement']:.4%}", verdict(task.get("passed")),
    )
    return table


def layer_table(layers: dict, worst: int = 8) -> Table:
    """The layers with the largest errors (all of them when there are few)."""
    table = Table(title=f"per layer (worst {worst}, in {layers['model']})")
    for col in ("layer", "max abs", "mean abs", "cosine"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    ranked = sorted(layers["errors"].items(), key=lambda kv: -kv[1]["max_abs"])[:worst]
    for name, e in ranked:
        table.add_row(name, f"{e['max_abs']:.3e}", f"{e['mean_abs']:.3e}", f"{e['cosine']:.8f}")
    return table


def print_validation(console, validation: dict, title: str) -> None:
    """Per-layer (if any), per-output and task tables, then the note on what ran."""
    if validation.get("layers", {}).get("errors"):
        console.print(layer_table(validation["layers"]))
    console.print(validation_table(validation["outputs"], title))
    if validation.get("task"):
        console.print(task_table(validation["task"]))
    console.print(f"ran: {validation['executed']}", markup=False)
    if validation.get("reference_overrides"):
        edits = ", ".join(f"{k} → {v}" for k, v in validation["reference_overrides"].items())
        console.print(f"reference: the torch model edited as the approximate rewrite computes ({edits}); "
                      "the task metric is the unedited model's", markup=False)
    for note in validation.get("reference_edits") or []:
        console.print(f"reference: {note}", markup=False)
    if validation.get("note"):
        console.print(f"note: {validation['note']}", markup=False)


def failure(validation: dict) -> str:
    """What failed, in words, for the closing FAIL line."""
    reasons = []
    if not all(o["passed"] for o in validation["outputs"].values()):
        reasons.append("outputs drifted past tolerance")
    task = validation.get("task") or {}
    if task.get("passed") is False:
        budget = f"{task['max_metric_delta']:.3%}" if task.get("relative_budget") else f"{task['max_metric_delta']:g}"
        reasons.append(f"the task metric degraded past its budget ({task['metric']} {task['delta']:+.4g}, budget {budget})")
    return "; ".join(reasons) or "validation failed"


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
