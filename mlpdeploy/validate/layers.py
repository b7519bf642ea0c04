"""Per-layer validation: compare each block's output in torch with the same value in ONNX.

Layers are found through the module scopes the exporter records on nodes: a layer is a
child of a ModuleList (path ending in a number, e.g. `layers.3`) or a direct child of one
(`layers.3.mlp`). Its ONNX value is the single value that leaves the nodes of that scope;
layers without exactly one such value, or whose torch output is not one tensor of the same
shape, are skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

from mlpdeploy.backends.tensorrt.fp4_weights import decode_fp4_weights, has_fp4_weights
from mlpdeploy.memory import release_memory
from mlpdeploy.model.bundle import ModelBundle
from mlpdeploy.model.hooks import capture_outputs
from mlpdeploy.model.paging import release_weights
from mlpdeploy.model.torch_run import run_module, to_numpy
from mlpdeploy.onnx_io import external_data_folder, load_ir
from mlpdeploy.scopes import inherited_scopes, is_layer_path, natural_key
from mlpdeploy.validate.metrics import ErrorStats, error_stats
from mlpdeploy.validate.tolerance import Tolerance


def scope_members(model: ir.Model, layers_only: bool = True) -> dict[str, set[ir.Node]]:
    """Module path → the nodes inside it (layers only, or every module scope)."""
    members: dict[str, set[ir.Node]] = {}
    for node, scopes in inherited_scopes(model.graph).items():
        for scope in scopes:
            if scope and (is_layer_path(scope) or not layers_only):
                members.setdefault(scope, set()).add(node)
    return members


NO_SCOPES = "the candidate carries no module scopes (e.g. an ONNX Runtime-optimized graph)"


def layer_values(model: ir.Model, layers_only: bool = True) -> tuple[dict[str, ir.Value], dict[str, str]]:
    """(layer path → the ONNX value leaving it, layer path → why it was skipped); with
    `layers_only=False`, every module scope instead of the layers."""
    members = scope_members(model, layers_only)
    graph_outputs = set(model.graph.outputs)
    found, skipped = {}, {}
    for path, nodes in members.items():
        leaving = [
            out
            for node in nodes
            for out in node.outputs
            if out in graph_outputs or any(user not in nodes for user, _ in out.uses())
        ]
        if len(leaving) == 1:
            found[path] = leaving[0]
        else:
            skipped[path] = f"{len(leaving)} values leave this scope in the graph"
    return found, skipped


def _torch_layer_outputs(bundle: ModelBundle, feed: dict[str, np.ndarray], paths: list[str]) -> dict[str, np.ndarray]:
    with capture_outputs(bundle.module, paths) as captured:
        run_module(bundle.module, feed, [s.name for s in bundle.inputs])
    release_weights(bundle.module)  # not resident while ONNX Runtime runs the graph next
    return {path: to_numpy(tensor) for path, tensor in captured.items()}


def run_values(model: ir.Model, values: list[ir.Value], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays `values` take when `model` runs on `feed` in ONNX Runtime (its optimizations off),
    by value name. Makes them the outputs of `model` (a copy the caller owns) and removes the nodes
    they do not need: a decoder's lm_head (SmolLM2: its transposed tied embedding, 108 MiB, and the
    logits) is not computed to compare the layers before it."""
    import onnxruntime as ort
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    model.graph.outputs.clear()
    model.graph.outputs.extend(dict.fromkeys(values))
    RemoveUnusedNodesPass()(model)
    if has_fp4_weights(model):  # ONNX Runtime's CPU provider cannot dequantize FP4: decode them exactly
        decode_fp4_weights(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    folder = external_data_folder(model)
    if folder is not None:  # weights stay in their file: ONNX Runtime maps them from there
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = list(dict.fromkeys(v.name for v in values))
    wanted = {i.name for i in session.get_inputs()}
    results = dict(zip(names, session.run(names, {k: v for k, v in feed.items() if k in wanted})))
    del session
    release_memory()  # what the session freed goes back to the system now, not when glibc sees fit
    return results


def layer_arrays(bundle: ModelBundle, model: ir.Model, values: dict[str, ir.Value], feed: dict[str, np.ndarray],
                 skipped: dict[str, str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Scope path → (ONNX array, torch array) for each value in `values` (float32); scopes that
    cannot be compared are added to `skipped` with the reason."""
    reference = _torch_layer_outputs(bundle, feed, list(values))
    results = run_values(model, list(values.values()), feed)
    arrays = {}
    for path, value in values.items():
        if path not in reference:
            skipped[path] = "the torch module's output is not a tensor"
            continue
        ref, cand = reference[path].astype(np.float32), np.asarray(results[value.name], dtype=np.float32)
        if ref.shape != cand.shape:
            skipped[path] = f"shape {list(cand.shape)} in ONNX vs {list(ref.shape)} in torch"
            continue
        arrays[path] = (cand, ref)
    return arrays


def compare_layers(bundle: ModelBundle, candidate: Path | str, feed: dict[str, np.ndarray],
                   tolerance: Tolerance | None = None) -> tuple[dict[str, ErrorStats], dict[str, str]]:
    """Errors per layer between the torch reference and an ONNX graph with module scopes, on one feed;
    with `tolerance`, also how much of it each layer's output would use (reported, not judged).

    The graph runs in ONNX Runtime with its own optimizations off and every layer's value
    marked as an output.
    """
    model = load_ir(candidate)
    values, skipped = layer_values(model)
    if not values:
        return {}, skipped or {"*": NO_SCOPES}
    arrays = layer_arrays(bundle, model, values, feed, skipped)
    errors = {path: error_stats(cand, ref, tolerance=tolerance.for_output(ref) if tolerance else None,
                                      stat=tolerance.stat if tolerance else "elementwise") for path, (cand, ref) in arrays.items()}
    return dict(sorted(errors.items(), key=lambda kv: natural_key(kv[0]))), skipped
