"""Module scopes recorded on exported nodes (`pkg.torch.onnx.name_scopes`)."""

from __future__ import annotations

import ast

import onnx_ir as ir

SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def name_scopes(node: ir.Node) -> list[str]:
    """The scope list torch's exporter recorded, e.g. ['', 'mlp', 'mlp.gate_proj', 'linear']."""
    raw = node.metadata_props.get(SCOPES_KEY)
    if not raw:
        return []
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return []
    return [str(s) for s in value] if isinstance(value, list) else []


# A fused node that replaced a module's linears inside a block that holds them itself (OPT's fc1/fc2)
# sits in the block's scope; this key names the module whose output its value is (`layers.3.fc2`).
OUTPUT_MODULE_KEY = "mlpdeploy.output_module"


def module_path(node: ir.Node) -> str:
    """The dotted path of the innermost module that produced `node` ('' for the root)."""
    scopes = name_scopes(node)
    # The last entry names the op inside the module; the one before is the module path.
    return scopes[-2] if len(scopes) >= 2 else ""


def is_layer_path(path: str) -> bool:
    """A layer: a child of a ModuleList (`layers.3`) or a direct child of one (`layers.3.mlp`)."""
    parts = path.split(".")
    return bool(path) and (parts[-1].isdigit() or (len(parts) >= 2 and parts[-2].isdigit()))


def natural_key(path: str) -> list:
    """Sort key that puts `layers.2` before `layers.10`."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split(".")]


def inherited_scopes(graph: ir.Graph) -> dict[ir.Node, list[str]]:
    """Each node's enclosing modules (its name_scopes minus the op entry). Nodes the exporter's
    optimizer created without scopes (e.g. a Split it rewrote) inherit the scopes their
    producers share."""
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


def module_scopes(model: ir.Model) -> set[str]:
    """Every module path recorded on the main graph's nodes (`layers.3`, `layers.3.mlp`, ...)."""
    return {scope for node in model.graph for scope in name_scopes(node)[:-1] if scope}
