"""Tidy the weights of mlpdeploy ops a torch export wrote: fold them to initializers, name them.

A torch module may prepare an op's weights in its forward (KANLinear scales, permutes and
flattens its spline weight; FANLayer transposes its linears). The exporter folds such
constant subgraphs only below 8192 elements, so a large layer would redo the work at every
inference: `fold_op_weights` folds them whatever their size (the limit is the largest such
weight, nothing larger). `name_op_weights` renames the folded initializers (named after the
torch node that made them, e.g. `t_1`, `view_2`) `<module scope>.<op input name>`.
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass

from mlpdeploy.contract import DOMAIN
from mlpdeploy.plugins.registry import OPS
from mlpdeploy.scopes import module_path


def _op_nodes(model: ir.Model) -> list[ir.Node]:
    return [n for n in model.graph if n.domain == DOMAIN and n.op_type in OPS]


def _weights(node: ir.Node) -> list[tuple[int, ir.Value]]:
    return [(i, v) for i, v in enumerate(node.inputs) if i > 0 and v is not None]


def fold_op_weights(model: ir.Model) -> int:
    """Fold the constant subgraphs that compute mlpdeploy ops' weight inputs; returns how many were left unfolded before."""
    pending = [v for node in _op_nodes(model) for _, v in _weights(node) if not v.is_initializer() and v.producer() is not None]
    sizes = [math.prod(v.shape) for v in pending if v.shape is not None and all(isinstance(d, int) for d in v.shape)]
    if not pending or not sizes:
        return 0
    from onnxscript.optimizer import fold_constants

    limit = max(sizes)
    fold_constants(model, input_size_limit=limit, output_size_limit=limit)
    RemoveUnusedNodesPass()(model)
    return len(pending)


def name_op_weights(model: ir.Model) -> None:
    """Rename each single-use initializer feeding an mlpdeploy op whose name has no module path
    (`t_1`, `view_2`) to `<scope>.<input name>` (e.g. `layers.0.spline_weight`)."""
    graph = model.graph
    for node in _op_nodes(model):
        names = OPS[node.op_type].face("onnx_function").INPUT_NAMES
        scope = module_path(node)
        for i, value in _weights(node):
            if not value.is_initializer() or "." in (value.name or "") or len(value.uses()) != 1 or not scope:
                continue
            new_name = f"{scope}.{names[i]}"
            if new_name not in graph.initializers:
                graph.initializers.pop(value.name)
                value.name = new_name
                graph.initializers[new_name] = value
