"""Bisect and reduce: where a candidate first leaves its torch reference, and the smallest graph
that still shows it (what `polygraphy debug reduce` does for TensorRT, keyed by module scope).

`bisect_layers` compares every layer's output (a child of a ModuleList, and its direct
children, as the per-layer comparison finds them) and walks them in graph order: the first one
over tolerance is where the numbers went wrong — earlier layers match, so its own nodes did it.

`reduce_divergence` looks at every module scope with one value leaving it (`layers.1.mlp`, also
`layers.1.mlp.down_proj`), keeps those over tolerance, and cuts the one with the fewest nodes out
of the graph (onnx.utils.Extractor: the scope's nodes between the values entering it and the one
leaving it). It writes the subgraph, the values entering it (captured from the candidate's own
run, in Polygraphy's inputs JSON) and torch's output of that module (a Polygraphy RunResults
JSON), so `polygraphy run OUT.onnx --onnxrt --load-inputs OUT.inputs.json --load-outputs
OUT.reference.json` replays the divergence, and checks that it does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from mlpdeploy.atomic import staged_files
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import ModelBundle
from mlpdeploy.onnx_io import load_ir, write_onnx
from mlpdeploy.validate.layers import NO_SCOPES, layer_arrays, layer_values, run_values, scope_members
from mlpdeploy.validate.metrics import ErrorStats, error_stats
from mlpdeploy.validate.tolerance import Tolerance


def within(cand: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> bool:
    """Polygraphy's elementwise rule: an element fails when both its absolute and relative error are over."""
    diff = np.abs(cand.astype(np.float64) - ref.astype(np.float64))
    rel = diff / np.maximum(np.abs(ref.astype(np.float64)), np.finfo(np.float64).tiny)
    return not bool(np.any((diff > atol) & (rel > rtol)) or np.isnan(diff).any())


@dataclass
class BisectReport:
    first: str | None  # the first layer (graph order) over tolerance; None: every layer matches
    last_good: str | None  # the layer before it that matched
    errors: dict[str, ErrorStats]  # every compared layer, in graph order, with its verdict
    skipped: dict[str, str]
    reduced: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict:
        data = {"first_diverging": self.first, "last_matching": self.last_good,
                "errors": {k: v.to_json() for k, v in self.errors.items()}, "skipped": self.skipped}
        if self.reduced is not None:
            data["reduced"] = self.reduced
        return data


def _graph_order(model: ir.Model, values: dict[str, ir.Value]) -> list[str]:
    """Scope paths ordered by where their value is computed (the graph is topologically sorted)."""
    position = {node: i for i, node in enumerate(model.graph)}
    return sorted(values, key=lambda p: (position.get(values[p].producer(), -1), p.count(".")))


def _judge(cand: np.ndarray, ref: np.ndarray, tolerance: Tolerance) -> ErrorStats:
    limits = tolerance.for_output(ref)
    if tolerance.stat != "elementwise":  # an aggregate rule (int8 activations): its `used` decides
        stats = error_stats(cand, ref, tolerance=limits, stat=tolerance.stat)
        stats.passed = bool(stats.used <= 1.0)
        return stats
    return error_stats(cand, ref, within(cand, ref, *limits), limits)


def _judged(bundle: ModelBundle, model: ir.Model, values, feed, tolerance: Tolerance, skipped) -> dict[str, tuple[ErrorStats, np.ndarray, np.ndarray]]:
    arrays = layer_arrays(bundle, model, values, feed, skipped)
    order = [p for p in _graph_order(model, values) if p in arrays]
    return {p: (_judge(*arrays[p], tolerance), *arrays[p]) for p in order}


def bisect_layers(bundle: ModelBundle, layer_model: Path | str, feed: dict[str, np.ndarray], tolerance: Tolerance) -> BisectReport:
    """The first layer of `layer_model` (an ONNX graph with module scopes) whose output is over
    `tolerance` (each layer's output judged with the tolerance it gives for that output)."""
    model = load_ir(layer_model)
    values, skipped = layer_values(model)
    if not values:
        return BisectReport(None, None, {}, skipped or {"*": NO_SCOPES})
    judged = _judged(bundle, model, values, feed, tolerance, skipped)
    first = last_good = None
    for path, (stats, _, _) in judged.items():
        if not stats.passed:
            first = path
            break
        last_good = path
    return BisectReport(first, last_good, {p: s for p, (s, _, _) in judged.items()}, skipped)


def reduce_divergence(bundle: ModelBundle, layer_model: Path | str, feed: dict[str, np.ndarray], tolerance: Tolerance,
                      output: Path | str) -> dict[str, Any] | None:
    """Write the smallest module scope of `layer_model` over tolerance as `output` (+ its inputs and
    torch's output, Polygraphy JSON); None (nothing written) when no scope diverges."""
    output = Path(output)
    model = load_ir(layer_model)
    values, skipped = layer_values(model, layers_only=False)
    members = scope_members(model, layers_only=False)
    judged = _judged(bundle, model, values, feed, tolerance, skipped)
    diverging = [p for p, (stats, _, _) in judged.items() if not stats.passed]
    if not diverging:
        return None
    scope = min(diverging, key=lambda p: (len(members[p]), diverging.index(p)))
    stats, _, reference = judged[scope]
    model = load_ir(layer_model)  # run_values pruned the first copy to the values it ran
    nodes = scope_members(model, layers_only=False)[scope]
    entering = _entering(nodes)
    out_name = layer_values(model, layers_only=False)[0][scope].name
    captured = run_values(model, entering, feed) if entering else {}  # prunes `model` to what `entering` needs
    feed_in = {v.name: captured[v.name] if v.name in captured else feed[v.name] for v in entering}
    sub = onnx.utils.Extractor(ir.to_proto(load_ir(layer_model))).extract_model([v.name for v in entering], [out_name])
    got = _run_proto(sub, feed_in)[out_name]
    reproduced = _judge(np.asarray(got, np.float32), reference, tolerance)
    inputs_path, reference_path = output.with_suffix(".inputs.json"), output.with_suffix(".reference.json")
    _save(sub, output, feed_in, inputs_path, {out_name: reference}, reference_path)
    return {"scope": scope, "nodes": len(nodes), "graph_nodes": len(list(load_ir(layer_model).graph)),
            "inputs": sorted(feed_in), "output": out_name, "model": str(output), "inputs_json": str(inputs_path),
            "reference_json": str(reference_path), "errors_in_graph": stats.to_json(), "errors_reduced": reproduced.to_json(),
            "reproduces": reproduced.passed is False, "diverging_scopes": diverging}


def _entering(nodes: set[ir.Node]) -> list[ir.Value]:
    """Values the scope's nodes read that are computed outside it (not weights, not Constant nodes)."""
    seen: dict[str, ir.Value] = {}
    for node in nodes:
        for value in node.inputs:
            if value is None or value.is_initializer() or value.name in seen:
                continue
            producer = value.producer()
            if producer in nodes or (producer is not None and producer.op_type == "Constant"):
                continue
            seen[value.name] = value
    return list(seen.values())


def _run_proto(proto: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def _save(sub: onnx.ModelProto, output: Path, feed: dict, inputs_path: Path, reference: dict, reference_path: Path) -> None:
    """The subgraph, its inputs (Polygraphy inputs JSON) and torch's output (Polygraphy RunResults JSON), each atomically."""
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import save_json

    if output.suffix != ".onnx":
        raise MlpdeployError(f"--reduce {output}: name the reduced model with an .onnx suffix")
    with staged_files(output) as tmp:
        write_onnx(sub, tmp)
    with staged_files(inputs_path) as tmp:
        save_json([feed], str(tmp), description="inputs of the reduced model")
    with staged_files(reference_path) as tmp:
        results = RunResults([("torch", [IterationResult(reference, runner_name="torch")])])
        results.save(str(tmp))
