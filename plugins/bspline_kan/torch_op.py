"""BSplineKAN as a torch custom op, `torch.ops.mlpdeploy.bspline_kan`, exported as one node.

Eager and backward run the torch reference (backward by recomputing it under autograd); the
fake implementation gives torch.export the output shape [..., O]; the ONNX translation writes
one `mlpdeploy::BSplineKAN` node (see plugins/torch_export.py).
"""

from __future__ import annotations

import torch

from ..torch_export import onnx_op, recompute_autograd
from .reference import bspline_kan, check_shapes


@torch.library.custom_op("mlpdeploy::bspline_kan", mutates_args=())
def bspline_kan_op(x: torch.Tensor, grid: torch.Tensor, base_weight: torch.Tensor, spline_weight: torch.Tensor) -> torch.Tensor:
    """y = SiLU(x)·W_base + B(x)·W_spline (see reference.py)."""
    return bspline_kan(x, grid, base_weight, spline_weight)


@bspline_kan_op.register_fake
def _(x, grid, base_weight, spline_weight):
    _, o, _, _ = check_shapes(tuple(x.shape), tuple(grid.shape), tuple(base_weight.shape), tuple(spline_weight.shape))
    return x.new_empty((*x.shape[:-1], o))


recompute_autograd(bspline_kan_op, bspline_kan, tensor_inputs=4)

_ONNX = onnx_op("BSplineKAN", ["x", "grid", "base_weight", "spline_weight"], {})


def _translate(x, grid, base_weight, spline_weight):
    return _ONNX(x, grid, base_weight, spline_weight)


TRANSLATIONS = {torch.ops.mlpdeploy.bspline_kan.default: _translate}
