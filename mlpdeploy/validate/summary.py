"""A validation in the order a reader wants it: the verdict, the task metric and top-1 agreement,
then the outputs folded per kind — the 60 `present.{i}.key|value` outputs of a 30-layer decoder
read as two rows naming their worst layer — and the inputs in one line.

Everything here works on the validation's JSON (`ValidationReport.to_json()`, or a compile
report's `validation`), so the CLI tables and the HTML report say the same thing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

NUMBERED = re.compile(r"^(?P<head>.+?)\.(?P<index>\d+)\.(?P<tail>.+)$")  # present.12.key → ("present", "12", "key")


@dataclass
class OutputRow:
    """One output, or every output of one kind folded into a row (`present.*.key`): the worst
    member's numbers (`worst` names its index), how many were folded and how many failed."""

    name: str
    stats: dict
    count: int = 1
    worst: str | None = None  # the worst member's index (its layer)
    failed: int = 0

    @property
    def passed(self) -> bool | None:
        return self.stats.get("passed") if self.count == 1 else self.failed == 0

    @property
    def label(self) -> str:
        if self.count == 1:
            return self.name
        return f"{self.name} (×{self.count}, worst: layer {self.worst})"


@dataclass
class Summary:
    passed: bool
    detail: str  # why it passed or failed, and the worst output against its tolerance
    task: str | None  # the metric delta and top-1 agreement, in words
    outputs: list[OutputRow]
    inputs: str  # where the inputs came from, and their shapes folded

    @property
    def headline(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}: {self.detail}"


def _badness(stats: dict) -> tuple[float, float]:
    """Sort key: the share of its tolerance used (NaN: infinite; none: below any), then max abs."""
    used = stats.get("used")
    return (-1.0 if used is None else math.inf if math.isnan(used) else used), _num(stats.get("max_abs"))


def _num(value) -> float:
    return math.inf if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def fold_outputs(outputs: dict[str, dict]) -> list[OutputRow]:
    """Outputs named `<head>.<i>.<tail>` (two or more of one kind) folded into one row per kind,
    keeping the worst member's numbers (most of its tolerance used, else the largest max abs);
    the others one row each, in their order."""
    kinds: dict[str, list[tuple[str, str, dict]]] = {}
    for name, stats in outputs.items():
        match = NUMBERED.match(name)
        key = f"{match['head']}.*.{match['tail']}" if match else name
        kinds.setdefault(key, []).append((match["index"] if match else "", name, stats))
    rows = []
    for key, members in kinds.items():
        if len(members) == 1:
            _, name, stats = members[0]
            rows.append(OutputRow(name, stats))
            continue
        index, _, stats = max(members, key=lambda m: _badness(m[2]))
        failed = sum(1 for _, _, s in members if s.get("passed") is False)
        rows.append(OutputRow(key, stats, count=len(members), worst=index, failed=failed))
    return rows


def fold_shapes(shapes: dict[str, list[int]]) -> str:
    """`input_ids [2, 64], past_key_values.*.{key,value} ×30 [2, 3, 64, 64]`: numbered inputs of one
    kind folded, and kinds of one family with the same count and shape folded together."""
    kinds: dict[tuple[str, str], list[tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        match = NUMBERED.match(name)
        kinds.setdefault((match["head"], match["tail"]) if match else (name, ""), []).append(tuple(shape))
    families: dict[tuple[str, int, tuple], list[str]] = {}
    for (head, tail), members in kinds.items():
        distinct = set(members)
        shape = members[0] if len(distinct) == 1 else None
        families.setdefault((head, len(members) if tail else 0, shape), []).append(tail)
    parts = []
    for (head, count, shape), tails in families.items():
        text = "shapes vary" if shape is None else str(list(shape))
        if not count:
            parts.extend(f"{head} {text}" for _ in tails)
        else:
            tail = tails[0] if len(tails) == 1 else "{" + ",".join(tails) + "}"
            parts.append(f"{head}.*.{tail} ×{count} {text}")
    return ", ".join(parts)


def describe_inputs(validation: dict) -> str:
    """Where the inputs came from, then each feed's shapes, folded."""
    data = validation.get("input_data") or {}
    feeds = data.get("feeds") or [{"name": None, "shapes": validation.get("inputs", {})}]
    shapes = "; ".join(f"{f['name'] + ': ' if f.get('name') else ''}{fold_shapes(f['shapes'])}" for f in feeds)
    source = data.get("source")
    return f"{source}. {shapes}" if source else shapes


def percent(used: float | None) -> str:
    """How much of its tolerance an output used, e.g. `0.652%`, `95.1%`, `1,250%`."""
    if used is None:
        return "-"
    if math.isinf(used) or math.isnan(used):
        return "inf"
    return f"{100 * used:,.0f}%" if used >= 1.0 else f"{100 * used:.3g}%"


def task_line(task: dict) -> str:
    """`perplexity 12.39 → 12.40 (+0.081%), top-1 agreement 99.61% on 64 held-out samples (budget 1%: PASS)`."""
    agreement = "pooled-output cosine" if task["metric"] == "cosine" else "top-1 agreement"
    line = (f"{task['metric']} {task['reference']:.6g} → {task['candidate']:.6g} ({task['relative_delta']:+.3%}), "
            f"{agreement} {task['agreement']:.2%} on {task['samples']} held-out samples of {task['task']}")
    if "passed" in task:
        budget = f"{task['max_metric_delta']:.3%}" if task.get("relative_budget") else f"{task['max_metric_delta']:g}"
        line += f" (budget {budget}: {'PASS' if task['passed'] else 'FAIL'})"
    return line


def failure(validation: dict) -> str:
    """What failed, in words."""
    reasons = []
    over = [row for row in fold_outputs(validation["outputs"]) if row.passed is False]
    if over:
        named = ", ".join(row.name if row.count == 1 else f"{row.failed} of {row.count} {row.name}" for row in over)
        reasons.append(f"outputs drifted past tolerance ({named})")
    task = validation.get("task") or {}
    if task.get("passed") is False:
        budget = f"{task['max_metric_delta']:.3%}" if task.get("relative_budget") else f"{task['max_metric_delta']:g}"
        reasons.append(f"the task metric degraded past its budget ({task['metric']} {task['delta']:+.4g}, budget {budget})")
    return "; ".join(reasons) or "validation failed"


def summarize(validation: dict) -> Summary:
    """The verdict first: PASS/FAIL with why, the worst output against its tolerance, the task line."""
    rows = fold_outputs(validation["outputs"])
    worst = max(rows, key=lambda r: _badness(r.stats), default=None)
    if worst is None:
        where = "no outputs"
    else:
        name = worst.name if worst.count == 1 else f"{worst.name} at layer {worst.worst}"
        where = f"worst {name}: max abs {_num(worst.stats.get('max_abs')):.3g}, {percent(worst.stats.get('used'))} of its tolerance"
    passed = bool(validation["passed"])
    total = sum(r.count for r in rows)
    if passed:
        detail = f"{total} output{'s' if total != 1 else ''} within tolerance ({where})"
    else:
        detail = f"{failure(validation)} ({where})"
    task = validation.get("task")
    return Summary(passed, detail, task_line(task) if task else None, rows, describe_inputs(validation))
