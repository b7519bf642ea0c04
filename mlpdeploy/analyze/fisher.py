"""How much the task loss grows when module outputs change: one forward and backward pass
estimate every candidate change of every site at once (a second-order proxy).

A *change* of a site (a module: a linear, a sublayer's output projection, a block) maps what
the module received and returned to the change of its output, `Δy = f(x, y)` (a quantized
weight: `x·Wqᵀ − y`; a dropped branch: `−y`). With `g_t = ∂L/∂y_t`, the gradient of the summed
task loss at each position t (one backward pass, parameters frozen), the loss moves by

    ΔL ≈ Σ_t g_t·Δy_t + ½ Σ_t (g_t·Δy_t)²

to second order, the Hessian replaced by the empirical Fisher `Σ_t g_t g_tᵀ` taken per position
(the quadratic term of BRECQ / HAWQ-style sensitivity, here on outputs rather than weights).
The first-order term is what the calibration tokens happen to reward and carries no information
about held-out text (it averages to zero at a trained model's optimum), so planners use the
second-order term, divided by the loss terms (tokens or samples), as the expected growth of the
*mean* loss: for perplexity, `Δlog ppl`, i.e. a relative change of perplexity.

Every change of every site is computed inside the backward hook of that site's output, so no
activations beyond autograd's own are kept and the cost is one forward, one backward (of
activations only) and one extra product per change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from mlpdeploy.model.hooks import first_tensor
from mlpdeploy.model.torch_run import flatten_outputs, to_tensors

Change = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (module input, module output) -> Δ output
LossFn = Callable[[torch.Tensor, dict[str, np.ndarray]], tuple[torch.Tensor, int]]  # (first output, batch) -> (summed loss, terms)


@dataclass
class ChangeStats:
    """Sums over calibration positions for one change of one site."""

    first: float = 0.0  # Σ g·Δy
    second: float = 0.0  # Σ_t (g_t·Δy_t)²
    error: float = 0.0  # Σ |Δy|²
    reference: float = 0.0  # Σ |y|²
    terms: int = 0  # loss terms (tokens, samples) the sums are over

    def loss_growth(self) -> float:
        """Expected growth of the mean loss: ½ Σ (g·Δy)² / terms (≥ 0)."""
        return 0.5 * self.second / self.terms if self.terms else 0.0

    def output_error(self) -> float:
        """Relative RMS output error |Δy| / |y|."""
        return (self.error / self.reference) ** 0.5 if self.reference else 0.0

    def to_json(self) -> dict:
        return {"loss_growth": self.loss_growth(), "first_order": self.first / self.terms if self.terms else 0.0,
                "output_error": self.output_error()}


def cross_entropy_loss(labels_key: str) -> LossFn:
    """Summed cross-entropy of logits [..., classes] against the batch's integer labels."""

    def loss(logits: torch.Tensor, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, int]:
        labels = torch.from_numpy(np.ascontiguousarray(batch[labels_key])).long()
        flat = logits.float().reshape(-1, logits.shape[-1])
        return torch.nn.functional.cross_entropy(flat, labels.reshape(-1), reduction="sum"), int(labels.numel())

    return loss


def estimate_changes(module: torch.nn.Module, batches: Iterable[dict[str, np.ndarray]], input_names: list[str], loss_fn: LossFn,
                     changes: dict[str, dict[str, Change]]) -> dict[str, dict[str, ChangeStats]]:
    """`{site: {change name: ChangeStats}}` for `changes` ({module path: {name: Δ function}}) over `batches`."""
    modules = dict(module.named_modules())
    stats = {site: {name: ChangeStats() for name in named} for site, named in changes.items()}
    frozen = [(p, p.requires_grad) for p in module.parameters()]
    handles = []

    def watch(site: str):
        def hook(_module, args, output):
            x, y = first_tensor(args), first_tensor(output)
            if y is None or not y.requires_grad:
                return
            x = x.detach() if x is not None else None
            y_value = y.detach()

            def on_grad(grad: torch.Tensor) -> None:
                g = grad.detach().float()
                with torch.no_grad():
                    for name, change in changes[site].items():
                        dy = change(x, y_value).float()
                        per_position = (g * dy).reshape(-1, dy.shape[-1]).sum(-1).double()
                        s = stats[site][name]
                        s.first += float(per_position.sum())
                        s.second += float((per_position ** 2).sum())
                        s.error += float((dy.double() ** 2).sum())
                        s.reference += float((y_value.double() ** 2).sum())

            y.register_hook(on_grad)

        return hook

    def leaf_grad(_module, _args, output):  # token embeddings start the graph autograd differentiates
        return output.detach().requires_grad_(True) if isinstance(output, torch.Tensor) and output.is_floating_point() else output

    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        handles += [m.register_forward_hook(leaf_grad) for m in modules.values() if isinstance(m, torch.nn.Embedding)]
        handles += [modules[site].register_forward_hook(watch(site)) for site in changes]
        for batch in batches:
            tensors = to_tensors(batch, input_names)
            tensors = [t.float().requires_grad_(True) if t.is_floating_point() else t for t in tensors]
            with torch.enable_grad():
                out = flatten_outputs(module(*tensors))[0]
                loss, terms = loss_fn(out, batch)
                loss.backward()
            for named in stats.values():
                for s in named.values():
                    s.terms += terms
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
    return stats
