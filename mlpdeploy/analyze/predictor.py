"""Deja Vu's low-rank neuron predictor: scores `(x·P_a)·P_b` (d → r → h) trained to say which
neurons of a ReLU MLP fire for input x, and recall at k on held-out tokens.

Initialization: the rank-r SVD of the up projection's weight (scores ≈ the pre-activations
without bias: the training-free predictor `sparse-mlp:rank=R` uses without a plan). Training:
full-batch Adam on binary cross-entropy (label: neuron active, i.e. its hidden value > 0), a
fixed number of steps on minibatches of calibration tokens, seeded. Recall at k: of the
neurons that really fire on a held-out token, the share its k best scores contain (summed
over tokens: Σ|topk ∩ active| / Σ|active|).
"""

from __future__ import annotations

import numpy as np
import torch

from mlpdeploy.model.sparsity import svd_predictor  # the training-free start, shared with pass sparse-mlp


def train_predictor(x: torch.Tensor, active: torch.Tensor, w_up: np.ndarray, rank: int, *, steps: int = 150,
                    batch: int = 2048, lr: float = 3e-3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fit P_a, P_b on tokens x [T, d] with labels active [T, h] (bool), from the SVD start."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: OpenMP's barriers cost more than a second thread gains (10x on a loaded 2-core machine)
    try:
        return _train(x, active, w_up, rank, steps, batch, lr, seed)
    finally:
        torch.set_num_threads(threads)


def _train(x, active, w_up, rank, steps, batch, lr, seed) -> tuple[np.ndarray, np.ndarray]:
    p_a0, p_b0 = svd_predictor(w_up, rank)
    scale = float(np.sqrt(np.abs(p_a0).mean() / max(np.abs(p_b0).mean(), 1e-12)))  # balance the two factors
    p_a = torch.tensor(p_a0 / scale, requires_grad=True)
    p_b = torch.tensor(p_b0 * scale, requires_grad=True)
    labels = active.float()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam([p_a, p_b], lr=lr)
    x = x.float()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (min(batch, x.shape[0]),), generator=gen)
        loss = torch.nn.functional.binary_cross_entropy_with_logits((x[idx] @ p_a) @ p_b, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return p_a.detach().numpy().copy(), p_b.detach().numpy().copy()


def recall_curve(x: torch.Tensor, active: torch.Tensor, p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
    """recall[k-1] = recall at k, for k = 1..h, on tokens x [T, d] with labels active [T, h]."""
    scores = (x.float() @ torch.from_numpy(p_a)) @ torch.from_numpy(p_b)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    hits = torch.gather(active.float(), 1, order).sum(0).cumsum(0)
    total = float(active.sum())
    return (hits / total).numpy() if total else np.ones(scores.shape[1])


def k_for_recall(curve: np.ndarray, recall: float) -> int:
    """The smallest k whose recall reaches `recall` (h when none below does)."""
    reached = np.nonzero(curve >= recall - 1e-12)[0]
    return int(reached[0]) + 1 if reached.size else int(curve.size)
