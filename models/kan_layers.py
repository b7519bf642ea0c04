"""Kolmogorov–Arnold layers as torch modules whose forward is ONE mlpdeploy custom op each, so a
model built from them exports with one `mlpdeploy::` node per layer (plugins/torch_export.py):

* `GroupRational` — KAT's GR-KAN activation (`KAT_Group`): y = P(x)/Q(x) per channel group;
* `KANLinear` — efficient-kan's B-spline KAN layer, same parameters and buffer (`base_weight`,
  `spline_weight`, `spline_scaler`, `grid`), so its state dicts load;
* `FANLayer` — FAN's layer (`input_linear_p`, `input_linear_g`), concat[cos p, sin p, act g].

Eager runs the ops' torch references and trains through them (plugins/*/reference.py).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mlpdeploy.plugins.bspline_kan.reference import uniform_grid
from mlpdeploy.plugins.bspline_kan.torch_op import bspline_kan_op
from mlpdeploy.plugins.fan_layer.torch_op import fan_layer_op
from mlpdeploy.plugins.group_rational.presets import preset
from mlpdeploy.plugins.group_rational.torch_op import group_rational_op


class GroupRational(nn.Module):
    """GR-KAN: channel c of x [..., C] goes through group c // (C/groups)'s rational function.

    `init` is a fitted preset (identity, swish, gelu, relu) for denominator `form` A or B;
    `shared_numerator` (KAT's KAT_Group) keeps one numerator for every group.
    """

    def __init__(self, groups: int = 8, init: str = "swish", form: str = "A", shared_numerator: bool = True):
        super().__init__()
        self.groups, self.form, self.init = groups, form, init
        numerator, denominator = preset(init, form, groups, shared_numerator)
        self.numerator = nn.Parameter(numerator)
        self.denominator = nn.Parameter(denominator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_rational_op(x, self.numerator, self.denominator, self.form)

    def extra_repr(self) -> str:
        m, n = self.numerator.shape[1] - 1, self.denominator.shape[1]
        return f"groups={self.groups}, degrees=({m}, {n}), form={self.form}, init={self.init}"


class KANLinear(nn.Module):
    """efficient-kan's KANLinear: y = SiLU(x)·base_weightᵀ + B(x)·(spline_weight·spline_scaler)ᵀ."""

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range: tuple[float, float] = (-1.0, 1.0), scale_noise: float = 0.1, scale_base: float = 1.0,
                 scale_spline: float = 1.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.spline_order = grid_size, spline_order
        self.register_buffer("grid", uniform_grid(in_features, grid_size, spline_order, grid_range))
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, grid_size + spline_order))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5) * scale_base)
        nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5) * scale_spline)
        with torch.no_grad():
            self.spline_weight.normal_(0.0, scale_noise / grid_size)

    def op_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W_base [I, O], W_spline [I·(G+K), O]): the op's layout of this layer's weights."""
        scaled = self.spline_weight * self.spline_scaler.unsqueeze(-1)  # [O, I, G+K]
        return self.base_weight.t(), scaled.permute(1, 2, 0).reshape(-1, self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bspline_kan_op(x, self.grid, *self.op_weights())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, grid_size={self.grid_size}, spline_order={self.spline_order}"


class FANLayer(nn.Module):
    """FAN's layer: concat[cos(p), sin(p), act(g)], p = input_linear_p(x) (P = ⌊out·p_ratio⌋), g = input_linear_g(x)."""

    def __init__(self, in_features: int, out_features: int, p_ratio: float = 0.25, activation: str = "gelu", use_p_bias: bool = True):
        super().__init__()
        p = int(out_features * p_ratio)
        self.activation = activation
        self.input_linear_p = nn.Linear(in_features, p, bias=use_p_bias)
        self.input_linear_g = nn.Linear(in_features, out_features - 2 * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, g = self.input_linear_p, self.input_linear_g
        b_p = p.bias if p.bias is not None else p.weight.new_zeros(p.out_features)
        return fan_layer_op(x, p.weight.t(), g.weight.t(), b_p, g.bias, self.activation)
