"""FANLayer's semantics as a torch function: the oracle every other face is tested against.

The layer of FAN (Dong et al., 2024, "FAN: Fourier Analysis Networks"):

    p = x·W_p + b_p      g = x·W_g + b_g
    y = concat([cos(p), sin(p), act(g)], axis=-1)           [..., 2P + D]

x [..., I], W_p [I, P], W_g [I, D], b_p [P], b_g [D] (the weights pre-transposed: the reference
code's `input_linear_p.weight`ᵀ and `input_linear_g.weight`ᵀ; a layer built without a p bias
passes zeros). `act` is one of gated_mlp's ACTIVATIONS (FAN's default: gelu, the erf form).
Math in fp32 whatever the I/O dtype; the result is rounded once to x's dtype.
"""

from __future__ import annotations

import torch

from mlpdeploy.errors import OpError

from ..gated_mlp.reference import ACTIVATIONS, activate

__all__ = ["ACTIVATIONS", "check_shapes", "fan_layer"]


def check_shapes(x_shape, wp_shape, wg_shape, bp_shape, bg_shape, activation: str) -> tuple[int, int, int]:
    """(I, P, D), or a one-line OpError saying what does not fit."""
    if activation not in ACTIVATIONS:
        raise OpError(f"unknown FANLayer activation {activation!r}; available are {', '.join(ACTIVATIONS)}")
    if len(wp_shape) != 2 or len(wg_shape) != 2 or int(wp_shape[0]) != int(wg_shape[0]):
        raise OpError(f"FANLayer wants W_p [I, P] and W_g [I, D] with the same I, got {tuple(wp_shape)} and {tuple(wg_shape)}")
    i, p, d = int(wp_shape[0]), int(wp_shape[1]), int(wg_shape[1])
    if tuple(int(v) for v in bp_shape) != (p,) or tuple(int(v) for v in bg_shape) != (d,):
        raise OpError(f"FANLayer biases must be b_p [{p}] and b_g [{d}], got {tuple(bp_shape)} and {tuple(bg_shape)}")
    if not len(x_shape) or (isinstance(x_shape[-1], int) and x_shape[-1] != i):
        raise OpError(f"FANLayer input has last dim {x_shape[-1] if len(x_shape) else None}, the weights expect {i}")
    return i, p, d


def fan_layer(x, w_p, w_g, b_p, b_g, activation: str = "gelu") -> torch.Tensor:
    """The FANLayer op on torch tensors: x [..., I] → [..., 2P + D]."""
    check_shapes(tuple(x.shape), tuple(w_p.shape), tuple(w_g.shape), tuple(b_p.shape), tuple(b_g.shape), activation)
    xf = x.float()
    p = xf @ w_p.float() + b_p.float()
    g = xf @ w_g.float() + b_g.float()
    return torch.cat([torch.cos(p), torch.sin(p), activate(g, activation)], dim=-1).to(x.dtype)
