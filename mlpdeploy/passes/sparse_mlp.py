"""`sparse-mlp`: replace MLPs with `mlpdeploy::SparseMLP`, which computes only the neurons each token
selects (contextual sparsity; op semantics in plugins/sparse_mlp/reference.py). Approximate.

- ReLU-style MLPs `down(act(up(x)))` (act any recognized activation; a gated MLP's inner SiLU is
  not one) become topk mode: a low-rank predictor (x·P_a)·P_b scores the neurons and each token
  keeps its k best. With a plan (`analyze --sparsity --max-metric-delta`) each site has its k and
  a predictor trained on calibration activations (the plan's `.sparse-mlp.safetensors`, passed as
  `artifact`); `recall=R` takes each site's k for recall R from the plan's held-out measurements
  instead. Without a plan: `k=K` (neurons) and the training-free predictor, the rank-`rank`
  (default d/8) SVD of W_up.
- Gated MLPs with separate gate and up linears `down(act(gate(x)) ⊙ up(x))` become threshold mode
  (CATS): the gate is computed in full and a neuron counts where |act(gate)| > t: the plan's per-
  layer thresholds, or `threshold=T` for all.
Weights are laid out once: W_up and W_downᵀ as one row per neuron ([h, d], [h, d_out]) so each
selected neuron is two contiguous rows; missing biases become zeros. The pass records for each
site the torch-side selection it computes (module overrides: mlpdeploy.model.sparsity), so
validation compares the graph with the torch model computing the same neurons, and the task
metric with the dense model (the delta is the cost of the sparsity).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import DOMAIN, IR_VERSION
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.sparsity import SparseSite, svd_predictor
from mlpdeploy.passes.base import PassReport, RewritePass
from mlpdeploy.passes.matching import (
    Linear,
    MatchFailure,
    add_initializer,
    check,
    common_scope,
    match_activation,
    match_linear,
    remove_dead,
    scoped_metadata,
    unique_name,
    value_names,
)
from mlpdeploy.passes.matching.gated import match_down, match_site
from mlpdeploy.passes.options import Option
from mlpdeploy.plugins.sparse_mlp.onnx_function import OP_TYPE, ensure_function, sparse_mlp_node
from mlpdeploy.scopes import OUTPUT_MODULE_KEY, module_path

ACTIVATION_OPS = ("Relu", "Gelu", "Mul", "Div", "Swish")


class SparseMLPPass(RewritePass):
    """Replace ReLU / gated MLPs with mlpdeploy::SparseMLP (predictor top-k, or gate threshold)."""

    name = "sparse-mlp"
    description = ("compute only selected MLP neurons (mlpdeploy::SparseMLP): ReLU MLPs by a low-rank predictor's top-k "
                   "(k=, recall= from a plan, rank= for the SVD predictor), gated MLPs where |act(gate)| > threshold=")
    options = {
        "k": Option(0, "neurons each token keeps in a ReLU MLP (0: the plan's per-site k)", minimum=0),
        "recall": Option(0.0, "take each planned site's k for this held-out recall (0: off; needs a plan)", minimum=0.0),
        "rank": Option(0, "rank of the training-free SVD predictor (0: the plan's trained one, else d/8)", minimum=0),
        "threshold": Option(-1.0, "gated MLPs: a neuron counts where |act(gate)| > T (negative: the plan's per-layer thresholds)"),
        "artifact": Option("", "the plan's predictors file (.sparse-mlp.safetensors; --plan passes it)"),
    }
    reference = ("edited: each MLP computes only the neurons its site selects (recorded in the manifest as "
                 "module_overrides, which validation applies)")

    def rewrite(self, model: ir.Model) -> PassReport:
        report = PassReport(self.name, details={"sites": {}})
        graph = model.graph
        arrays = _load(self.config["artifact"])
        taken, node_names = value_names(graph), {n.name for n in graph if n.name}
        for node in list(graph):
            if node.graph is not graph or node.op_type not in ACTIVATION_OPS:
                continue
            try:
                site = _match(node)
                if site is None:
                    continue
                scope = (common_scope(site["nodes"]) or [""])[-1]
                settings = self.site_settings(scope)
                check(settings is not None, f"module {scope or '(root)'} is not among the plan's sites")
                sparse = self._selection(site, scope, settings, arrays)
            except MatchFailure as failure:
                if node.op_type == "Relu" or node.op_type == "Mul" and _feeds_linear(node):
                    report.skipped[node.name or node.op_type] = failure.reason
                continue
            name = _apply(model, site, sparse, scope, taken, node_names)
            report.rewritten += 1
            report.module_overrides[sparse.down] = sparse.to_json()
            report.details["sites"][name] = {"mode": sparse.mode, "hidden": site["hidden"], "activation": site["activation"],
                                             **({"k": sparse.k, "rank": int(sparse.p_a.shape[1])} if sparse.mode == "topk"
                                                else {"threshold": float(sparse.threshold[0])})}
        if report.rewritten:
            model.ir_version = max(model.ir_version or IR_VERSION, IR_VERSION)
        return report

    def _selection(self, site: dict, scope: str, settings: dict, arrays: dict) -> SparseSite:
        up_path, down_path = settings.get("up") or site["up_path"], settings.get("down") or site["down_path"]
        if site["mode"] == "threshold":
            t = self.config["threshold"] if self.config["threshold"] >= 0 else settings.get("threshold")
            check(t is not None, "a gated MLP needs threshold=T (or a plan from `analyze --sparsity --max-metric-delta`)")
            return SparseSite("threshold", up_path, down_path, threshold=np.array([t], np.float32), activation=site["activation"])
        h = site["hidden"]
        k = self.config["k"] or settings.get("k")
        if self.config["recall"]:
            table = settings.get("k_for_recall") or {}
            check(bool(table), "recall= needs a plan from `analyze --sparsity --max-metric-delta` (its held-out recall per k)")
            k = _k_at(table, self.config["recall"])
        check(bool(k), "a ReLU MLP needs k=K (or recall=R / a plan from `analyze --sparsity --max-metric-delta`)")
        check(1 <= int(k) <= h, f"k={k} is not in 1..{h} (the hidden width)")
        if f"{scope}.p_a" in arrays and not self.config["rank"]:
            p_a, p_b = arrays[f"{scope}.p_a"], arrays[f"{scope}.p_b"]
        elif "recall" in settings and not self.config["rank"]:  # a planned site: its k was measured with the trained predictor
            raise MlpdeployError(
                f"sparse-mlp: the plan's site {scope} was planned with a trained predictor, but "
                f"{'the predictors file has none for it' if arrays else 'no predictors file was given'}; "
                "run the plan through `--plan PLAN` (its .sparse-mlp.safetensors beside it), or set rank= for the SVD predictor"
            )
        else:
            p_a, p_b = svd_predictor(site["w_up"].T, self.config["rank"] or max(4, site["w_up"].shape[0] // 8))
        check(p_a.shape[0] == site["w_up"].shape[0] and p_b.shape[1] == h, f"the predictor's shapes {p_a.shape}, {p_b.shape} do not fit the MLP")
        return SparseSite("topk", up_path, down_path, k=int(k), p_a=p_a.astype(np.float32), p_b=p_b.astype(np.float32),
                          activation=site["activation"])


def _k_at(table: dict, recall: float) -> int:
    levels = sorted((float(r), int(k)) for r, k in table.items())
    for level, k in levels:
        if level >= recall - 1e-12:
            return k
    raise MatchFailure(f"recall={recall} is above the plan's highest measured level {levels[-1][0]}")


def _load(path: str) -> dict[str, np.ndarray]:
    if not path:
        return {}
    if not Path(path).is_file():
        raise MlpdeployError(f"sparse-mlp predictors {path} do not exist; re-run `mlpdeploy analyze MODEL --sparsity ... -o PLAN`")
    from safetensors.numpy import load_file

    return load_file(path)


def _feeds_linear(node: ir.Node) -> bool:
    return any(u.node.op_type in ("MatMul", "Gemm") for out in node.outputs for u in out.uses())


def _match(node: ir.Node) -> dict | None:
    """A ReLU-style or gated MLP ending at `node`'s reader, or None when `node` is no MLP's activation/product."""
    if node.op_type == "Mul" and _feeds_linear(node):
        try:
            gated = match_site(node, bilinear=False)
        except MatchFailure:
            gated = None
        if gated is not None:
            check(gated.gate is not None, "a fused gate_up linear: split it first (threshold mode needs the gate apart)")
            return {"mode": "threshold", "x": gated.x, "hidden": gated.hidden, "activation": gated.activation, "gate": gated.gate,
                    "up": gated.up, "down": gated.down, "nodes": gated.nodes, "template": gated.product,
                    "up_path": module_path(gated.gate.nodes[0]), "down_path": module_path(gated.down.nodes[0])}
    act = match_activation(node.outputs[0])
    if act is None or act.nodes[-1] is not node:
        return None
    up: Linear = match_linear(act.input)
    down = match_down(node, up.out_features)
    nodes = [*up.nodes, *act.nodes, *down.nodes]
    return {"mode": "topk", "x": up.input, "hidden": up.out_features, "activation": act.kind, "up": up, "down": down,
            "nodes": nodes, "template": node, "w_up": up.weight_array(),
            "up_path": module_path(up.nodes[0]), "down_path": module_path(down.nodes[0])}


def _apply(model: ir.Model, site: dict, sparse: SparseSite, scope: str, taken: set[str], node_names: set[str]) -> str:
    graph = model.graph
    base = scope or "sparse_mlp"
    up, down = site["up"], site["down"]
    dtype = up.weight_array().dtype

    def new(suffix: str, array: np.ndarray) -> ir.Value:
        return add_initializer(graph, unique_name(f"{base}.{suffix}", taken), np.ascontiguousarray(array, dtype=dtype))

    def bias(linear: Linear, n: int) -> np.ndarray:
        b = linear.bias_array()
        return np.zeros(n, dtype) if b is None else b

    h, d_out = site["hidden"], down.out_features
    rows = [new("sparse.w_up_rows", up.weight_array().T), new("sparse.b_up", bias(up, h)),
            new("sparse.w_down_t", down.weight_array()), new("sparse.b_down", bias(down, d_out))]
    if sparse.mode == "topk":
        inputs = [*rows, new("sparse.p_a", sparse.p_a), new("sparse.p_b", sparse.p_b),
                  add_initializer(graph, unique_name(f"{base}.sparse.k", taken), np.array([sparse.k], np.int64))]
    else:
        gate = site["gate"]
        inputs = [new("sparse.w_gate", gate.weight_array()), new("sparse.b_gate", bias(gate, h)), *rows,
                  new("sparse.threshold", sparse.threshold)]
    name = unique_name(scope or "sparse_mlp", node_names)
    node = sparse_mlp_node(site["x"], *inputs, mode=sparse.mode, activation=site["activation"], name=name)
    node.outputs[0].dtype = up.dtype
    node.metadata_props.update(scoped_metadata(site["template"], common_scope(site["nodes"]), "sparse_mlp", f"{DOMAIN}::{OP_TYPE}"))
    node.metadata_props["mlpdeploy.rewritten_by"] = SparseMLPPass.name
    node.metadata_props[OUTPUT_MODULE_KEY] = site["down_path"]  # the module whose output the MLP's value was
    old_inputs = [v for n in site["nodes"] for v in n.inputs]
    ir.convenience.replace_nodes_and_values(graph, down.nodes[-1], site["nodes"], [node], [down.output], [node.outputs[0]])
    ensure_function(model, node)
    taken.difference_update(remove_dead(graph, old_inputs))
    return name
