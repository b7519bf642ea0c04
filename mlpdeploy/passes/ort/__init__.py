"""Rules that rewrite graphs into ONNX Runtime contrib ops (used by the `ort-decoder` and `ort-fusions`
passes), and the model copies they try fusions on."""

from __future__ import annotations

import onnx_ir as ir


def copy_model(model: ir.Model) -> ir.Model:
    """An independent copy of the graph and functions (fusions are tried on one, and kept only when
    they fully apply). Initializer tensors are shared, not copied: no rule edits a tensor's data,
    and a serialized copy doubled a 2 GB model's memory."""
    return model.clone()


def adopt(model: ir.Model, other: ir.Model) -> None:
    """Make `model` (passes work in place) hold `other`'s graph (with its opsets) and functions."""
    model.graph = other.graph
    model.functions.clear()
    model.functions.update(other.functions)
