"""BSplineKAN's semantics as a torch function: the oracle every other face is tested against.

The layer of efficient-kan (`KANLinear`), written with the weights pre-transposed:

    y = SiLU(x)·W_base + B(x)·W_spline

x [..., I]; grid [I, G+2K+1] holds each input feature's knots t_0 < … < t_{G+2K} (efficient-kan's
`grid` buffer: a uniform grid of G intervals on [grid_min, grid_max], extended by K knots on
each side, t_j = grid_min + (j − K)·h, h = (grid_max − grid_min)/G; `uniform_grid` builds it;
`update_grid` in efficient-kan makes it non-uniform, which the op takes as it is).
B(x) [..., I·(G+K)] are the Cox–de Boor bases of order K (cubic: K = 3) of each feature,
feature-major (element i·(G+K) + j is B_j(x_i)):

    B_{j,0}(x) = 1 if t_j ≤ x < t_{j+1} else 0
    B_{j,k}(x) = (x − t_j)/(t_{j+k} − t_j)·B_{j,k−1}(x) + (t_{j+k+1} − x)/(t_{j+k+1} − t_{j+1})·B_{j+1,k−1}(x)

(zero outside [t_0, t_{G+2K})). W_base [I, O] = efficient-kan's `base_weight`ᵀ; W_spline [I·(G+K), O]
= its `scaled_spline_weight` [O, I, G+K] permuted to [I, G+K, O] and flattened. K is not an
attribute: it follows from the shapes, K = grid.shape[1] − W_spline.shape[0]/I − 1. Math in
fp32 whatever the I/O dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mlpdeploy.errors import OpError


def check_shapes(x_shape, grid_shape, base_shape, spline_shape) -> tuple[int, int, int, int]:
    """(I, O, G+K bases per feature, K), or a one-line OpError saying what does not fit."""
    if len(base_shape) != 2 or len(spline_shape) != 2 or len(grid_shape) != 2:
        raise OpError(
            f"BSplineKAN wants grid [I, G+2K+1], W_base [I, O], W_spline [I*(G+K), O]; got {tuple(grid_shape)}, "
            f"{tuple(base_shape)}, {tuple(spline_shape)}"
        )
    i, o = int(base_shape[0]), int(base_shape[1])
    if int(grid_shape[0]) != i or int(spline_shape[1]) != o or i < 1 or int(spline_shape[0]) % i:
        raise OpError(
            f"BSplineKAN shapes do not agree: grid {tuple(grid_shape)}, W_base {tuple(base_shape)}, W_spline {tuple(spline_shape)} "
            "(want grid [I, G+2K+1], W_base [I, O], W_spline [I*(G+K), O])"
        )
    bases = int(spline_shape[0]) // i
    order = int(grid_shape[1]) - bases - 1
    if bases < 1 or order < 0:
        raise OpError(f"BSplineKAN grid has {grid_shape[1]} knots per feature, too few for {bases} bases (want G+2K+1 with G+K = {bases})")
    if not len(x_shape) or (isinstance(x_shape[-1], int) and x_shape[-1] != i):
        raise OpError(f"BSplineKAN input has last dim {x_shape[-1] if len(x_shape) else None}, the weights expect {i}")
    return i, o, bases, order


def uniform_grid(in_features: int, grid_size: int = 5, spline_order: int = 3, grid_range=(-1.0, 1.0)) -> torch.Tensor:
    """efficient-kan's initial knots: [I, G+2K+1], t_j = grid_min + (j − K)·h."""
    h = (grid_range[1] - grid_range[0]) / grid_size
    knots = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float32) * h + grid_range[0]
    return knots.expand(in_features, -1).contiguous()


def b_spline_bases(x2d: torch.Tensor, grid: torch.Tensor, order: int) -> torch.Tensor:
    """Cox–de Boor bases of order `order`: x2d [R, I], grid [I, NK] → [R, I, NK − 1 − order] (fp32)."""
    x = x2d.unsqueeze(-1)
    bases = ((x >= grid[:, :-1]) & (x < grid[:, 1:])).to(x.dtype)
    for k in range(1, order + 1):
        left = (x - grid[:, : -(k + 1)]) / (grid[:, k:-1] - grid[:, : -(k + 1)]) * bases[:, :, :-1]
        right = (grid[:, k + 1 :] - x) / (grid[:, k + 1 :] - grid[:, 1:(-k)]) * bases[:, :, 1:]
        bases = left + right
    return bases


def bspline_kan(x: torch.Tensor, grid: torch.Tensor, base_weight: torch.Tensor, spline_weight: torch.Tensor) -> torch.Tensor:
    """The BSplineKAN op on torch tensors: x [..., I], grid [I, G+2K+1], W_base [I, O], W_spline [I*(G+K), O]."""
    i, o, _, order = check_shapes(tuple(x.shape), tuple(grid.shape), tuple(base_weight.shape), tuple(spline_weight.shape))
    x2d = x.float().reshape(-1, i)
    base = F.silu(x2d) @ base_weight.float()
    bases = b_spline_bases(x2d, grid.float(), order).reshape(x2d.shape[0], -1)
    y = base + bases @ spline_weight.float()
    return y.reshape(*x.shape[:-1], o).to(x.dtype)
