"""GatedMLP semantics as a torch function: the oracle every other face is tested against.

    y = (act(x @ W_gate + b_gate) * (x @ W_up + b_up)) @ W_down + b_down

with `W_gate_up = concat([W_gate, W_up], axis=1)` of shape [d, 2h] — the GATE (activated)
half first — and `W_down` of shape [h, d_out]. `act` is one of ACTIVATIONS; `none` makes
the block bilinear, `gelu` is the exact erf form, `gelu_tanh` the tanh approximation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mlpdeploy.errors import OpError

ACTIVATIONS: tuple[str, ...] = ("silu", "gelu", "gelu_tanh", "relu", "none")


def activate(t: torch.Tensor, activation: str) -> torch.Tensor:
    """Apply one of ACTIVATIONS elementwise."""
    if activation == "silu":
        return F.silu(t)
    if activation == "gelu":
        return F.gelu(t)
    if activation == "gelu_tanh":
        return F.gelu(t, approximate="tanh")
    if activation == "relu":
        return F.relu(t)
    if activation == "none":
        return t
    raise OpError(f"unknown GatedMLP activation {activation!r}; available are {', '.join(ACTIVATIONS)}")


def gated_mlp(
    x: torch.Tensor,
    w_gate_up: torch.Tensor,
    w_down: torch.Tensor,
    b_gate_up: torch.Tensor | None = None,
    b_down: torch.Tensor | None = None,
    activation: str = "silu",
) -> torch.Tensor:
    """The GatedMLP op on torch tensors: x [..., d], w_gate_up [d, 2h], w_down [h, d_out]."""
    d, two_h = w_gate_up.shape
    if two_h % 2 or x.shape[-1] != d or w_down.shape[0] != two_h // 2:
        raise OpError(
            f"GatedMLP shapes do not agree: x {tuple(x.shape)}, w_gate_up {tuple(w_gate_up.shape)}, "
            f"w_down {tuple(w_down.shape)} (want x [..., d], w_gate_up [d, 2h], w_down [h, d_out])"
        )
    gate_up = x @ w_gate_up
    if b_gate_up is not None:
        gate_up = gate_up + b_gate_up
    gate, up = gate_up.chunk(2, dim=-1)
    y = (activate(gate, activation) * up) @ w_down
    if b_down is not None:
        y = y + b_down
    return y
