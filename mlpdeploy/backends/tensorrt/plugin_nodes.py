"""Which nodes TensorRT's ONNX parser would resolve to a plugin, and whether they can be built.

A node resolves to a plugin when it carries `plugin_namespace`/`plugin_version`, or when it is
outside the standard ONNX domains and no model-local function defines it (the parser then looks
its op_type up in the plugin registry).
"""

from __future__ import annotations

from collections import Counter

import onnx_ir as ir

from mlpdeploy.contract import PLUGIN_NAMESPACE, STANDARD_DOMAINS
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.plugins.forms import all_nodes, names_plugin, plugin_nodes
from mlpdeploy.plugins.registry import OPS, PLUGIN_ATTRIBUTES


def plugin_resolving_nodes(model: ir.Model) -> list[str]:
    """Nodes the TensorRT parser would resolve to a plugin, as `'name' (domain::Op): why`."""
    found = []
    for function, node in all_nodes(model):
        owner = f" in function {function.name}" if function is not None else ""
        label = f"{node.name or '<unnamed>'!r} ({node.domain + '::' if node.domain else ''}{node.op_type}){owner}"
        if names_plugin(node):
            found.append(f"{label} carries {', '.join(a for a in PLUGIN_ATTRIBUTES if a in node.attributes)}")
        elif node.domain not in STANDARD_DOMAINS and node.op_identifier() not in model.functions:
            found.append(f"{label} is in domain {node.domain!r} and has no ONNX function body")
    return found


def count_plugin_nodes(model: ir.Model, libraries: list[str]) -> Counter:
    """Plugin node count per `namespace::op`, with one-line errors for plugins nothing will register."""
    counts: Counter = Counter()
    for node in plugin_nodes(model):
        attribute = node.attributes.get("plugin_namespace")
        namespace = attribute.as_string() if attribute is not None else ""
        counts[f"{namespace}::{node.op_type}"] += 1
        if namespace == PLUGIN_NAMESPACE and node.op_type not in OPS:
            raise MlpdeployError(
                f"node {node.name!r} asks for plugin {namespace}::{node.op_type}, but mlpdeploy has no such plugin; "
                f"its plugins are {', '.join(sorted(OPS)) or 'none'}"
            )
        if namespace != PLUGIN_NAMESPACE and not libraries:
            raise MlpdeployError(
                f"node {node.name!r} asks for plugin {namespace or '(no namespace)'}::{node.op_type}, which mlpdeploy "
                "does not provide; pass its library with --plugin-library (TensorRTOptions.plugin_libraries)"
            )
    return counts
