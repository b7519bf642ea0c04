"""Run one generated case: export the torch model, apply every combination of its passes (in the
case's order), and check ONNX Runtime against torch — the torch model edited the same way when an
approximate pass (drop-layers, sparse-mlp, quantize-weights) is in the combination — within the
tolerance of the precision.
"""

from __future__ import annotations

import copy
import itertools
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from hypothesis import strategies as st

from mlpdeploy.errors import MlpdeployError, first_line
from mlpdeploy.export import export_model
from mlpdeploy.model.inputs import generate_inputs
from mlpdeploy.model.torch_run import run_module
from mlpdeploy.passes import PHASES, PassSpec, pass_class, run_pipeline

from .fuzz_families import FAMILIES, CaseSpec, build_bundle, case_specs
from .fuzz_targets import TARGETS

# max |ONNX Runtime − torch| allowed, relative to max(1, max |torch|); "int8": MatMulNBits with int8
# activations (accuracy level 4), where one activation may round the other way (fuzz_quant.py)
TOLERANCE = {"fp32": 1e-4, "int8": 1e-2, "fp16": 3e-2}


@dataclass
class CaseResult:
    spec: CaseSpec
    combinations: int = 0
    subsets: int = 0  # how many combinations the case has (all subsets of its passes); more than run when capped
    checks: int = 0  # (combination, shape) pairs compared
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reports: dict[str, list[dict]] = field(default_factory=dict)  # combination label → each pass's report


@st.composite
def cases(draw, families=FAMILIES) -> CaseSpec:
    """A generated model with the passes that apply to it, their options and an order: any order
    within each phase, the phases in the order the passes declare (mlpdeploy.passes.PHASES)."""
    spec = draw(case_specs(families))
    names = [name for name, target in TARGETS.items() if target.applies(spec)]
    order = [n for phase in PHASES for n in draw(st.permutations([n for n in names if pass_class(n).phase == phase]))]
    spec.passes = [[name, draw(TARGETS[name].options(spec))] for name in order]
    return spec


def combinations(passes: list[list]) -> list[list[list]]:
    """Every subset of the passes, each in the case's order (the empty one: the export alone)."""
    return [list(c) for k in range(len(passes) + 1) for c in itertools.combinations(passes, k)]


# Pairs never checked in one combination: sparse-mlp picks neurons by rank or threshold, and in fp16
# (convert-precision) a near-tie among the scores picks another neuron than the fp32 torch reference
# does — a different, equally valid sparse model (found by fuzzing: errors of 0.11-0.16 against a
# fp16 tolerance of 0.07-0.08). Each is checked alone and with every other pass.
INCOMPARABLE = [{"sparse-mlp", "convert-precision"}]


def comparable(combo: list[list]) -> bool:
    names = {name for name, _ in combo}
    return not any(pair <= names for pair in INCOMPARABLE)


def chosen_combinations(passes: list[list], limit: int | None, seed: int) -> list[list[list]]:
    """All subsets, or at most `limit` of them: the export alone, each pass alone, the whole chain,
    then a random draw (seeded by the case) from the others, kept in subset order."""
    every = [c for c in combinations(passes) if comparable(c)]
    if limit is None or len(every) <= limit:
        return every
    longest = max(len(c) for c in every)
    required = [i for i, combo in enumerate(every) if len(combo) <= 1 or len(combo) == longest]
    others = sorted(set(range(len(every))) - set(required))
    rng = random.Random(seed)
    drawn = rng.sample(others, max(0, min(len(others), limit - len(required))))
    return [every[i] for i in sorted(required + drawn)]


def _session(model: ir.Model, check: bool) -> ort.InferenceSession:
    proto = ir.to_proto(model)
    if check:
        onnx.checker.check_model(proto)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _compare(name: str, got: np.ndarray, want: np.ndarray, precision: str) -> str | None:
    if got.shape != want.shape:
        return f"{name}: shape {list(got.shape)} != torch {list(want.shape)}"
    want = want.astype(np.float64)
    got = got.astype(np.float64)
    if not np.isfinite(got[np.isfinite(want)]).all():
        return f"{name}: non-finite values where torch is finite"
    finite = np.isfinite(want)
    scale = max(1.0, float(np.abs(want[finite]).max(initial=0.0)))
    err = float(np.abs(got[finite] - want[finite]).max(initial=0.0))
    tol = TOLERANCE[precision] * scale
    return None if err <= tol else f"{name}: max error {err:.3g} > {tol:.3g} ({precision})"


def run_case(spec: CaseSpec, workdir: Path, max_combinations: int | None = None) -> CaseResult:
    """Every combination of the case's passes (or `max_combinations` of them, `chosen_combinations`)
    on its exported model, checked at its shapes."""
    start = time.perf_counter()
    result = CaseResult(spec)
    bundle = build_bundle(spec)
    try:
        exported = export_model(bundle, Path(workdir) / "model.onnx")
    except MlpdeployError as exc:
        result.failures.append(f"export: {first_line(exc)}")
        return result
    base = onnx.load(str(exported.model_path))
    names = [s.name for s in bundle.inputs]
    outputs = bundle.output_names or [o["name"] for o in exported.manifest.outputs]
    feeds = [generate_inputs(bundle.inputs, seed=spec.seed + i, dims=shape) for i, shape in enumerate(spec.shapes)]
    plain = [dict(zip(outputs, run_module(bundle.module, feed, names))) for feed in feeds]
    result.subsets = sum(1 for combo in combinations(spec.passes) if comparable(combo))
    for combo in chosen_combinations(spec.passes, max_combinations, spec.seed):
        result.combinations += 1
        label = " → ".join(f"{n}{_opts(o)}" for n, o in combo) or "export"
        problem = _run_combo(spec, bundle, base, combo, feeds, plain, names, outputs, result, label)
        if problem:
            result.failures.append(f"[{label}] {problem}")
    result.seconds = time.perf_counter() - start
    return result


def _precision(name: str, options: dict) -> str:
    precision = TARGETS[name].precision
    return precision(options) if callable(precision) else precision


def _opts(options: dict) -> str:
    return ":" + ",".join(f"{k}={v}" for k, v in options.items()) if options else ""


def _run_combo(spec, bundle, base, combo, feeds, plain, names, outputs, result, label) -> str | None:
    model = ir.from_proto(base)
    try:
        reports = run_pipeline(model, [PassSpec(n, dict(o)) for n, o in combo])
    except Exception as exc:  # noqa: BLE001 - a pass that raises on a model it should handle is a finding
        return f"pipeline raised {type(exc).__name__}: {first_line(exc)}"
    result.reports[label] = reports
    if len(combo) == 1:
        expected = TARGETS[combo[0][0]].expected_sites(spec)
        if expected is not None and reports[0]["rewritten"] != expected:
            return f"rewrote {reports[0]['rewritten']} of {expected} sites; skipped: {reports[0]['skipped']}"
    reference, edited = bundle.module, False
    for (name, options), report in zip(combo, reports):
        edit = TARGETS[name].edit_reference
        if edit is not None:
            if not edited:
                reference, edited = copy.deepcopy(bundle.module), True
            problem = edit(reference, spec, options, report)
            if problem:
                return problem
    precision = max((_precision(n, o) for n, o in combo), key=TOLERANCE.__getitem__, default="fp32")
    try:
        session = _session(model, all(TARGETS[n].standard_ops for n, _ in combo))
    except Exception as exc:  # noqa: BLE001
        return f"invalid model: {type(exc).__name__}: {first_line(exc)}"
    graph_inputs = [i.name for i in session.get_inputs()]
    graph_outputs = [o.name for o in session.get_outputs()]
    for feed, shape, want in zip(feeds, spec.shapes, plain):
        if edited:
            want = dict(zip(outputs, run_module(reference, feed, names)))
        try:
            got = dict(zip(graph_outputs, session.run(graph_outputs, {k: feed[k] for k in graph_inputs})))
        except Exception as exc:  # noqa: BLE001
            return f"{shape}: ONNX Runtime raised {type(exc).__name__}: {first_line(exc)}"
        result.checks += 1
        missing = sorted(set(got) - set(want))
        if missing:
            return f"outputs {missing} are not the model's"
        for out_name, value in got.items():
            problem = _compare(out_name, value, want[out_name], precision)
            if problem:
                return f"{shape}: {problem}"
    return None
