"""Exporting mlpdeploy ops straight from torch: each op call becomes ONE `mlpdeploy::` node.

An op folder with a `torch_op.py` defines a `torch.library.custom_op` (eager: the op's torch
reference; backward: autograd through the reference, recomputed) and its ONNX translation, an
onnxscript call of the op in `Opset("mlpdeploy", 1)`. Pass `translation_table()` to
`torch.onnx.export(..., dynamo=True, custom_translation_table=...)`; the exported graph then
holds one node per op call, with the op's attributes and the output shapes torch.export
inferred. `attach_functions(model)` afterwards gives each node its overload and plugin
attributes and adds the model-local function body (the `onnx_function` face), so the model
runs in stock ONNX Runtime. mlpdeploy's own `export_model` does both.

The translation names its op through an `onnx.defs.OpSchema` built here and never registered
with ONNX (onnxscript needs a schema to tell inputs from attributes); the global schema
registry, which the ONNX checker and shape inference consult, is left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx_ir as ir

from mlpdeploy.contract import DOMAIN
from mlpdeploy.errors import OpError

from .registry import OPS

TENSOR_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


def onnx_op(op_type: str, inputs: Sequence[str], attributes: dict[str, str], optional: Sequence[str] = ()):
    """An onnxscript Op `mlpdeploy::<op_type>` (opset 1) with float inputs and one output, for translations.

    `attributes` maps each attribute name to its OpSchema.AttrType name (INT, FLOAT, STRING).
    """
    from onnx.defs import OpSchema
    from onnxscript.values import Op, Opset

    def param(name: str) -> OpSchema.FormalParameter:
        option = OpSchema.FormalParameterOption.Optional if name in optional else OpSchema.FormalParameterOption.Single
        return OpSchema.FormalParameter(name, "T", param_option=option)

    schema = OpSchema(
        op_type,
        DOMAIN,
        1,
        inputs=[param(n) for n in inputs],
        outputs=[OpSchema.FormalParameter("y", "T")],
        type_constraints=[("T", TENSOR_TYPES, "float tensors")],
        attributes=[OpSchema.Attribute(n, getattr(OpSchema.AttrType, t), "", required=False) for n, t in attributes.items()],
    )
    return Op(Opset(DOMAIN, 1), op_type, schema)


def recompute_autograd(custom_op, reference: Callable, tensor_inputs: int) -> None:
    """Register a backward for `custom_op` that recomputes `reference` under autograd.

    The first `tensor_inputs` arguments are tensors (saved for backward); the rest are
    attributes. Training runs the same arithmetic as the eager forward.
    """
    import torch

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:tensor_inputs])
        ctx.attributes = inputs[tensor_inputs:]

    def backward(ctx, grad):
        saved = ctx.saved_tensors
        wanted = [i for i, t in enumerate(saved) if t is not None and ctx.needs_input_grad[i]]
        grads: list = [None] * (tensor_inputs + len(ctx.attributes))
        if not wanted:
            return tuple(grads)
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(i in wanted) if t is not None else None for i, t in enumerate(saved)]
            out = reference(*leaves, *ctx.attributes)
            found = torch.autograd.grad(out, [leaves[i] for i in wanted], grad, allow_unused=True)
        for i, g in zip(wanted, found):
            grads[i] = g
        return tuple(grads)

    custom_op.register_autograd(backward, setup_context=setup_context)


def torch_op_modules() -> dict[str, object]:
    """The `torch_op` module of every registered op that has one, keyed by op type (imports them)."""
    return {op_type: module for op_type, op in OPS.items() if (module := op.torch_op()) is not None}


def translation_table() -> dict:
    """{torch op overload: onnxscript translation} for every op with a torch face."""
    table = {}
    for module in torch_op_modules().values():
        table.update(module.TRANSLATIONS)
    return table


def attach_functions(model: ir.Model) -> int:
    """Complete every `mlpdeploy::` node of the main graph (overload, plugin attributes) and add its
    model-local function; returns how many nodes there were. An unknown op type is refused."""
    count = 0
    for node in list(model.graph):
        if node.domain != DOMAIN:
            continue
        op = OPS.get(node.op_type)
        if op is None:
            raise OpError(f"the exported graph has an unknown {DOMAIN}::{node.op_type} node; known ops are {', '.join(OPS)}")
        face = op.face("onnx_function")
        face.complete_node(node)
        face.ensure_function(model, node)
        count += 1
    return count
