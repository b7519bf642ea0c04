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


def module_path(node: ir.Node) -> str:
    """The dotted path of the innermost module that produced `node` ('' for the root)."""
    scopes = name_scopes(node)
    # The last entry names the op inside the module; the one before is the module path.
    return scopes[-2] if len(scopes) >= 2 else ""
