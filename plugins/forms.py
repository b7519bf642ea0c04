"""The two forms a graph with mlpdeploy ops can take, for every op alike.

* plugin form (what passes write): each `mlpdeploy::<Op>` node carries
  `plugin_namespace="mlpdeploy"`, `plugin_version="1"`, so datacenter TensorRT (≥ 10.7) with
  the mlpdeploy plugins registered builds the plugin; ONNX Runtime inlines the local function.
* function-body form (for TensorRT-RTX, or TensorRT without plugins): no node names a plugin,
  so the TensorRT parser inlines the local function. TensorRT's parser keys local functions
  by name alone and ignores the IR v10 `overload` field, so overloaded functions are renamed
  `<Op>_<overload>` (overload cleared) and their call nodes follow; ONNX Runtime runs either form.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx_ir as ir

from mlpdeploy.contract import DOMAIN
from mlpdeploy.errors import OpError

from .registry import PLUGIN_ATTRIBUTES


def all_nodes(model: ir.Model) -> Iterator[tuple[ir.Function | None, ir.Node]]:
    """Every node of the main graph and of every model-local function (subgraphs included),
    with the function it sits in (None for the main graph)."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        yield None, node
    for function in model.functions.values():
        for node in ir.traversal.RecursiveGraphIterator(function):
            yield function, node


def names_plugin(node: ir.Node) -> bool:
    """Whether `node` carries `plugin_namespace`/`plugin_version` (TensorRT picks a plugin for it)."""
    return any(a in node.attributes for a in PLUGIN_ATTRIBUTES)


def plugin_nodes(model: ir.Model) -> list[ir.Node]:
    """The nodes, anywhere in the model, that name a TensorRT plugin."""
    return [node for _, node in all_nodes(model) if names_plugin(node)]


def _mlpdeploy_nodes(model: ir.Model) -> Iterator[ir.Node]:
    return (node for _, node in all_nodes(model) if node.domain == DOMAIN)


def function_body_form(model: ir.Model) -> None:
    """Strip plugin attributes from every mlpdeploy node and de-overload mlpdeploy functions, in place.

    Refuses a node with an empty input slot: TensorRT's parser rejects such a function call.
    """
    for node in _mlpdeploy_nodes(model):
        if any(v is None for v in node.inputs):
            raise OpError(
                f"{node.domain}::{node.op_type} node {node.name!r} has an empty input slot, which TensorRT's "
                "ONNX parser rejects; build it with the op's node builder"
            )
    renames: dict[tuple[str, str, str], str] = {}
    taken = {(f.domain, f.name) for f in model.functions.values()}
    for key in list(model.functions):
        domain, name, overload = key
        if domain != DOMAIN or not overload:
            continue
        new_name = f"{name}_{overload}"
        if (domain, new_name) in taken:
            raise OpError(
                f"cannot de-overload {domain}::{name}:{overload}: a function named {new_name!r} already exists"
            )
        taken.add((domain, new_name))
        renames[key] = new_name
    for key, new_name in renames.items():
        function = model.functions.pop(key)
        function.name = new_name
        function.overload = ""
        model.functions[function.identifier()] = function
    for node in _mlpdeploy_nodes(model):
        for attr in PLUGIN_ATTRIBUTES:
            node.attributes.pop(attr, None)
        new_name = renames.get((node.domain, node.op_type, node.overload))
        if new_name is not None:
            node.op_type = new_name
            node.overload = ""
