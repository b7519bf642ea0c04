"""FANLayer as a torch custom op, `torch.ops.mlpdeploy.fan_layer`, exported as one node.

Eager and backward run the torch reference (backward by recomputing it under autograd); the
fake implementation gives torch.export the output shape [..., 2P + D]; the ONNX translation
writes one `mlpdeploy::FANLayer` node with attribute `activation` (see plugins/torch_export.py).
"""

from __future__ import annotations

import torch

from ..torch_export import onnx_op, recompute_autograd
from .reference import check_shapes, fan_layer


@torch.library.custom_op("mlpdeploy::fan_layer", mutates_args=())
def fan_layer_op(x: torch.Tensor, w_p: torch.Tensor, w_g: torch.Tensor, b_p: torch.Tensor, b_g: torch.Tensor,
                 activation: str) -> torch.Tensor:
    """concat[cos(x·W_p + b_p), sin(x·W_p + b_p), act(x·W_g + b_g)] (see reference.py)."""
    return fan_layer(x, w_p, w_g, b_p, b_g, activation)


@fan_layer_op.register_fake
def _(x, w_p, w_g, b_p, b_g, activation):
    _, p, d = check_shapes(tuple(x.shape), tuple(w_p.shape), tuple(w_g.shape), tuple(b_p.shape), tuple(b_g.shape), activation)
    return x.new_empty((*x.shape[:-1], 2 * p + d))


recompute_autograd(fan_layer_op, fan_layer, tensor_inputs=5)

_ONNX = onnx_op("FANLayer", ["x", "w_p", "w_g", "b_p", "b_g"], {"activation": "STRING"})


def _translate(x, w_p, w_g, b_p, b_g, activation: str):
    return _ONNX(x, w_p, w_g, b_p, b_g, activation=activation)


TRANSLATIONS = {torch.ops.mlpdeploy.fan_layer.default: _translate}
