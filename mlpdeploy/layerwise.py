"""Per-layer validation: compare each block's output in torch with the same value in ONNX.

Layers are found through the module scopes the exporter records on nodes: a layer is a
child of a ModuleList (path ending in a number, e.g. `layers.3`) or a direct child of one
(`layers.3.mlp`). Its ONNX value is the single value that leaves the nodes of that scope;
layers without exactly one such value, or whose torch output is not one tensor of the same
shape, are skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch

from .bundle import ModelBundle
from .onnx_io import load_ir
from .scopes import name_scopes
from .validate import error_stats


@dataclass
class LayerErrors:
    max_abs: float
    max_rel: float
    mean_abs: float
    cosine: float
    shape: list[int]

    def to_json(self) -> dict:
        return dict(self.__dict__)


def is_layer_path(path: str) -> bool:
    parts = path.split(".")
    return bool(path) and (parts[-1].isdigit() or (len(parts) >= 2 and parts[-2].isdigit()))


def layer_values(model: ir.Model) -> tuple[dict[str, ir.Value], dict[str, str]]:
    """(layer path → the ONNX value leaving it, layer path → why it was skipped)."""
    members: dict[str, set[ir.Node]] = {}
    for node, scopes in _module_scopes(model.graph).items():
        for scope in scopes:
            if is_layer_path(scope):
                members.setdefault(scope, set()).add(node)
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


def _module_scopes(graph: ir.Graph) -> dict[ir.Node, list[str]]:
    """Each node's enclosing modules. Nodes the exporter's optimizer created without scopes
    (e.g. a Split it rewrote) inherit the scopes their producers share."""
    scopes: dict[ir.Node, list[str]] = {}
    for node in graph:  # exported graphs are topologically sorted
        own = name_scopes(node)[:-1]
        if not own:
            parents = [scopes[v.producer()] for v in node.inputs if v is not None and v.producer() in scopes]
            own = _common_prefix(parents) if parents else []
        scopes[node] = own
    return scopes


def _common_prefix(lists: list[list[str]]) -> list[str]:
    prefix = []
    for items in zip(*lists):
        if len(set(items)) != 1:
            break
        prefix.append(items[0])
    return prefix


def _torch_layer_outputs(bundle: ModelBundle, feed: dict[str, np.ndarray], paths: list[str]) -> dict[str, torch.Tensor]:
    modules = dict(bundle.module.named_modules())
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for path in paths:
        module = modules.get(path)
        if module is None:
            continue

        def hook(_mod, _inp, out, path=path):
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(first, torch.Tensor):
                captured[path] = first.detach()

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            bundle.module(*[torch.from_numpy(np.ascontiguousarray(feed[s.name])) for s in bundle.inputs])
    finally:
        for h in hooks:
            h.remove()
    return captured


def compare_layers(bundle: ModelBundle, candidate: Path | str, feed: dict[str, np.ndarray]) -> tuple[dict[str, LayerErrors], dict[str, str]]:
    """Errors per layer between the torch reference and the ONNX candidate on one feed."""
    import onnxruntime as ort

    model = load_ir(candidate)
    values, skipped = layer_values(model)
    if not values:
        return {}, skipped or {"*": "the candidate carries no module scopes (e.g. an ONNX Runtime-optimized graph)"}
    reference = _torch_layer_outputs(bundle, feed, list(values))
    existing = {v.name for v in model.graph.outputs}
    for value in values.values():
        if value.name not in existing:
            model.graph.outputs.append(value)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = list(dict.fromkeys(v.name for v in values.values()))
    results = dict(zip(names, session.run(names, feed)))
    errors = {}
    for path, value in values.items():
        if path not in reference:
            skipped[path] = "the torch module's output is not a tensor"
            continue
        ref, cand = reference[path].float().numpy(), np.asarray(results[value.name], dtype=np.float32)
        if ref.shape != cand.shape:
            skipped[path] = f"shape {list(cand.shape)} in ONNX vs {list(ref.shape)} in torch"
            continue
        errors[path] = LayerErrors(**error_stats(cand, ref), shape=list(ref.shape))
    return dict(sorted(errors.items(), key=lambda kv: _natural(kv[0]))), skipped


def _natural(path: str):
    return [int(p) if p.isdigit() else p for p in path.split(".")]
