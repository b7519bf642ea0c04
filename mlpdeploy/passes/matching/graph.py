"""Site checks, module scopes on new nodes, and graph edits (names, initializers, dead code)."""

from __future__ import annotations

import ast

import numpy as np
import onnx_ir as ir

from mlpdeploy.passes.matching.core import CLASSES_KEY, NAMESPACE_KEY, check, describe
from mlpdeploy.scopes import SCOPES_KEY, name_scopes

# ---------------------------------------------------------------- site checks and scopes


def check_enclosed(nodes: list[ir.Node], output: ir.Value) -> None:
    """Fail if a value computed inside `nodes` (other than `output`) is read outside them or is a
    graph output: replacing the nodes would leave that reader without its input."""
    inside = set(map(id, nodes))
    for node in nodes:
        for value in node.outputs:
            if value is output:
                continue
            check(not value.is_graph_output(), f"intermediate {describe(value)} ({node.op_type}) is a graph output")
            for use in value.uses():
                reader = use.node
                check(
                    id(reader) in inside,
                    f"intermediate {describe(value)} ({node.op_type}) is also read by {reader.op_type} {reader.name!r}",
                )


def common_scope(nodes: list[ir.Node]) -> list[str]:
    """The deepest module scope shared by `nodes` (each node's name_scopes minus its op entry)."""
    prefix: list[str] | None = None
    for node in nodes:
        scopes = name_scopes(node)[:-1]
        if not scopes:
            continue
        if prefix is None:
            prefix = scopes
        else:
            n = 0
            while n < min(len(prefix), len(scopes)) and prefix[n] == scopes[n]:
                n += 1
            prefix = prefix[:n]
    return prefix or []


def scoped_metadata(template: ir.Node, scope: list[str], op_entry: str, op_class: str) -> dict[str, str]:
    """`template`'s metadata_props with the scope keys cut to `scope` and ended by a new op entry,
    so `scopes.module_path` of the new node is `scope[-1]`."""
    props = dict(template.metadata_props)
    depth = len(scope)
    props[SCOPES_KEY] = repr([*scope, op_entry])
    try:
        classes = ast.literal_eval(props.get(CLASSES_KEY, "[]"))
    except (ValueError, SyntaxError):
        classes = []
    if isinstance(classes, list) and len(classes) >= depth:
        props[CLASSES_KEY] = repr([*classes[:depth], op_class])
    namespace = props.get(NAMESPACE_KEY)
    if namespace is not None:
        segments = namespace.split("/")
        if len(segments) >= depth:
            props[NAMESPACE_KEY] = "/".join([*segments[:depth], f"{op_entry}: {op_class}"])
    props.pop("pkg.torch.onnx.fx_node", None)  # named an aten op that no longer exists
    return props


# ---------------------------------------------------------------- graph edits


def value_names(graph: ir.Graph) -> set[str]:
    names = {v.name for v in graph.inputs if v.name} | set(graph.initializers)
    names |= {v.name for node in graph for v in node.outputs if v.name}
    return names


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... — the first not in `taken` (which it is added to)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def add_initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    tensor = ir.tensor(array, name=name)
    value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(tensor.dtype), const_value=tensor)
    graph.register_initializer(value)
    return value


def remove_dead(graph: ir.Graph, values: list[ir.Value]) -> list[str]:
    """Remove what `values` leave dead: initializers nobody reads, nodes (a weight Transpose, a
    Constant) whose outputs nobody reads, transitively. Returns the names of the values that went."""
    removed, work = [], list(values)
    while work:
        value = work.pop()
        if value is None or value.uses() or value.is_graph_output() or value.is_graph_input():
            continue
        if value.is_initializer():
            if graph.initializers.get(value.name) is value:
                del graph.initializers[value.name]
                removed.append(value.name)
            continue
        node = value.producer()
        if node is None or node.graph is not graph:
            continue
        if any(o.uses() or o.is_graph_output() for o in node.outputs):
            continue
        inputs = list(node.inputs)
        graph.remove(node, safe=True)
        removed.extend(o.name for o in node.outputs if o.name)
        work.extend(inputs)
    return removed


def inline_call(model: ir.Model, node: ir.Node, taken: set[str]) -> list[ir.Node]:
    """Replace a call of a model-local function (a body of plain nodes, no attribute references)
    by a copy of its body, in place; the copies carry the call's metadata (its module scope).
    Returns the new nodes in order."""
    function = model.functions[node.op_identifier()]
    graph = node.graph
    value_map: dict[int, ir.Value] = {id(formal): actual for formal, actual in zip(function.inputs, node.inputs)}
    nodes = []
    for inner in function:
        if any(a.is_ref() for a in inner.attributes.values()):
            raise ValueError(f"cannot inline {node.op_type} {node.name!r}: its body refers to the call's attributes")
        inputs = [value_map[id(v)] if v is not None else None for v in inner.inputs]
        new = ir.Node(inner.domain, inner.op_type, inputs, attributes=list(inner.attributes.values()), num_outputs=len(inner.outputs),
                      name=unique_name(f"{node.name or node.op_type}/{inner.name or inner.op_type}", taken))
        for old, out in zip(inner.outputs, new.outputs):
            out.name = unique_name(f"{node.name or node.op_type}/{old.name or 'value'}", taken)
            value_map[id(old)] = out
        new.metadata_props.update(node.metadata_props)
        nodes.append(new)
    outputs = [value_map[id(v)] for v in function.outputs]
    for old, new in zip(node.outputs, outputs):
        new.dtype, new.shape = old.dtype, old.shape
    ir.convenience.replace_nodes_and_values(graph, node, [node], nodes, list(node.outputs), outputs)
    return nodes
