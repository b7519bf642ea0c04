"""SparseMLP semantics as torch functions: the oracle every other face is tested against.

A SparseMLP computes an MLP over only the hidden neurons a selector picks, per row (token):

    y_r = Σ_{j ∈ S_r} a_rj · W_downᵀ[j] + b_down

Two modes (the node's function overload is `<mode>_<activation>`):

- **topk** (Deja Vu; ReLU-style MLPs `down(act(x·W_upᵀ + b_up))`): a low-rank predictor scores the
  neurons, `s_r = (x_r·P_a)·P_b`, and `S_r` = the k highest scores of row r (ties: lower index
  first, as ONNX TopK); `a_rj = act(x_r·W_up[j] + b_up[j])`.
- **threshold** (CATS; gated MLPs `down(act(x·W_gate + b_gate) ⊙ (x·W_upᵀ + b_up))`): the gate is
  computed in full, `g_r = act(x_r·W_gate + b_gate)`, and `S_r = {j : |g_rj| > t_j}` (t one value or
  one per neuron); `a_rj = g_rj · (x_r·W_up[j] + b_up[j])`.

Weights are stored row per neuron: `W_up [h, d]` and `W_downᵀ [h, d_out]` (pre-transposed at
rewrite time), so gathering a neuron reads two contiguous rows. The computation gathers the
UNION of the rows' selections once (`U = ∪_r S_r`, the Polar Sparsity batch union) and masks each
row to its own `S_r`: every row's result is the one it gets alone (batch-invariant outputs),
and a batch costs |U| neurons. With k = h (or every |g| > t) it is the dense MLP.
"""

from __future__ import annotations

import torch

from mlpdeploy.errors import OpError

from ..gated_mlp.reference import ACTIVATIONS, activate

MODES = ("topk", "threshold")

__all__ = ["ACTIVATIONS", "MODES", "activate", "dense_mlp", "sparse_mlp", "sparse_mlp_threshold", "sparse_mlp_topk",
           "threshold_mask", "topk_mask", "union"]


def _rows(x: torch.Tensor, d: int, what: str) -> torch.Tensor:
    if x.shape[-1] != d:
        raise OpError(f"SparseMLP {what}: x's last dim is {x.shape[-1]}, the weights expect {d}")
    return x.reshape(-1, d)


def topk_mask(x2: torch.Tensor, p_a: torch.Tensor, p_b: torch.Tensor, k: int) -> torch.Tensor:
    """[M, h] 0/1 mask: each row's k highest predictor scores (lower index first on ties)."""
    h = p_b.shape[1]
    if not 1 <= k <= h:
        raise OpError(f"SparseMLP k must be in 1..{h} (the hidden width), got {k}")
    scores = (x2 @ p_a) @ p_b
    # Stable descending sort = ONNX TopK's tie rule (equal scores: the lower index first).
    idx = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.zeros_like(scores).scatter_(1, idx, 1.0)


def threshold_mask(gate: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """[M, h] 0/1 mask of |gate| > threshold (threshold [1] or [h])."""
    return (gate.abs() > threshold).to(gate.dtype)


def union(mask: torch.Tensor) -> torch.Tensor:
    """Indices (ascending) of the neurons at least one row selects."""
    return torch.nonzero(mask.amax(dim=0) > 0).reshape(-1)


def sparse_mlp_topk(x, w_up, b_up, w_down_t, b_down, p_a, p_b, k: int, activation: str = "relu") -> torch.Tensor:
    """topk mode: x [..., d], w_up [h, d], b_up [h], w_down_t [h, d_out], b_down [d_out], p_a [d, r], p_b [r, h]."""
    h, d = w_up.shape
    if w_down_t.shape[0] != h or p_a.shape[0] != d or p_b.shape != (p_a.shape[1], h) or b_up.shape != (h,):
        raise OpError(f"SparseMLP shapes do not agree: w_up {tuple(w_up.shape)}, b_up {tuple(b_up.shape)}, "
                      f"w_down_t {tuple(w_down_t.shape)}, p_a {tuple(p_a.shape)}, p_b {tuple(p_b.shape)}")
    x2 = _rows(x, d, "topk")
    mask = topk_mask(x2, p_a, p_b, int(k))
    u = union(mask)
    hidden = activate(x2 @ w_up[u].T + b_up[u], activation) * mask[:, u]
    y = hidden @ w_down_t[u] + b_down
    return y.reshape(*x.shape[:-1], w_down_t.shape[1])


def sparse_mlp_threshold(x, w_gate, b_gate, w_up, b_up, w_down_t, b_down, threshold, activation: str = "silu") -> torch.Tensor:
    """threshold mode: w_gate [d, h] (column form: the gate is computed in full), the rest as topk."""
    h, d = w_up.shape
    if w_gate.shape != (d, h) or w_down_t.shape[0] != h or threshold.shape not in ((1,), (h,)):
        raise OpError(f"SparseMLP shapes do not agree: w_gate {tuple(w_gate.shape)}, w_up {tuple(w_up.shape)}, "
                      f"w_down_t {tuple(w_down_t.shape)}, threshold {tuple(threshold.shape)}")
    x2 = _rows(x, d, "threshold")
    gate = activate(x2 @ w_gate + b_gate, activation)
    mask = threshold_mask(gate, threshold)
    u = union(mask)
    hidden = (gate * mask)[:, u] * (x2 @ w_up[u].T + b_up[u])
    y = hidden @ w_down_t[u] + b_down
    return y.reshape(*x.shape[:-1], w_down_t.shape[1])


def dense_mlp(x, w_up, b_up, w_down_t, b_down, activation: str = "relu", w_gate=None, b_gate=None) -> torch.Tensor:
    """The dense MLP the op approximates (gated when w_gate is given), same weight layout."""
    up = x @ w_up.T + b_up
    hidden = activate(x @ w_gate + b_gate, activation) * up if w_gate is not None else activate(up, activation)
    return hidden @ w_down_t + b_down


def sparse_mlp(x: torch.Tensor, *inputs: torch.Tensor, mode: str = "topk", activation: str = "relu") -> torch.Tensor:
    """The SparseMLP op on torch tensors, inputs in the node's order (onnx_function.INPUT_NAMES)."""
    if mode not in MODES:
        raise OpError(f"unknown SparseMLP mode {mode!r}; available are {', '.join(MODES)}")
    if len(inputs) != 7:
        raise OpError(f"SparseMLP {mode} takes x and 7 inputs, got {len(inputs)}")
    if mode == "topk":
        *weights, k = inputs
        return sparse_mlp_topk(x, *weights, int(k.reshape(-1)[0]), activation)
    return sparse_mlp_threshold(x, *inputs, activation)
