"""Rules that rewrite graphs into ONNX Runtime contrib ops (used by the `ort-decoder` and `ort-fusions`
passes), and the model copies they try fusions on."""

from __future__ import annotations

import onnx_ir as ir


def copy_model(model: ir.Model) -> ir.Model:
    """An independent copy (fusions are tried on one, and kept only when they fully apply), through
    serialization: `Model.clone()` would share the initializer tensors, whose names live in the
    tensors themselves, so a rule renaming one in the attempt renamed it in the original too (the
    differential fuzzer found graphs left with dangling inputs when an attempt was undone). Weights
    kept in external data stay references (see `fuse_for_ort`), so this copies no weight bytes; the
    copy's references get back the directory they are read from, which serialization drops."""
    copy = ir.from_proto(ir.to_proto(model))
    for name, value in copy.graph.initializers.items():
        tensor, original = value.const_value, model.graph.initializers.get(name)
        if isinstance(tensor, ir.ExternalTensor) and original is not None and isinstance(original.const_value, ir.ExternalTensor):
            value.const_value = ir.ExternalTensor(tensor.location, tensor.offset, tensor.length, tensor.dtype, shape=tensor.shape,
                                                  name=tensor.name, base_dir=original.const_value.base_dir)
    return copy


def adopt(model: ir.Model, other: ir.Model) -> None:
    """Make `model` (passes work in place) hold `other`'s graph (with its opsets) and functions."""
    model.graph = other.graph
    model.functions.clear()
    model.functions.update(other.functions)
