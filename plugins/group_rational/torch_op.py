"""GroupRational as a torch custom op, `torch.ops.mlpdeploy.group_rational`, exported as one node.

Eager and backward run the torch reference (backward by recomputing it under autograd); the
fake implementation gives torch.export x's shape; the ONNX translation writes one
`mlpdeploy::GroupRational` node with attribute `form` (see plugins/torch_export.py).
"""

from __future__ import annotations

import torch

from ..torch_export import onnx_op, recompute_autograd
from .reference import check_shapes, group_rational


@torch.library.custom_op("mlpdeploy::group_rational", mutates_args=())
def group_rational_op(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor, form: str) -> torch.Tensor:
    """y = P(x)/Q(x) group-wise (see reference.py)."""
    return group_rational(x, numerator, denominator, form)


@group_rational_op.register_fake
def _(x, numerator, denominator, form):
    check_shapes(tuple(x.shape), tuple(numerator.shape), tuple(denominator.shape), form)
    return x.new_empty(x.shape)


recompute_autograd(group_rational_op, group_rational, tensor_inputs=3)

_ONNX = onnx_op("GroupRational", ["x", "numerator", "denominator"], {"form": "STRING"})


def _translate(x, numerator, denominator, form: str):
    return _ONNX(x, numerator, denominator, form=form)


TRANSLATIONS = {torch.ops.mlpdeploy.group_rational.default: _translate}
