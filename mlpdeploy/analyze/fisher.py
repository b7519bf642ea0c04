"""How much the task loss grows when module outputs change: one forward and one backward pass
estimate every candidate change of every site at once (a second-order proxy).

A *change* of a site (a module: a linear, a branch's output projection, a block) maps what the
module received and returned to the change of its output, `Δy = f(x, y)` (a quantized weight:
`x·Wqᵀ − y`; a dropped branch: `−y`). With `g_t = ∂L/∂y_t` the gradient of the summed loss at
each position t (one backward pass with the parameters frozen), the loss moves by

    ΔL ≈ Σ_t g_t·Δy_t + ½ Σ_t (g_t·Δy_t)²

to second order, the Hessian replaced by the empirical Fisher taken per position (the quadratic
term of BRECQ- and HAWQ-style sensitivity, here on a module's outputs). The first-order term is
what the calibration tokens happen to reward: it averages to zero at a trained model's optimum
and says nothing about held-out text, so planners use the second-order term divided by the loss
terms (tokens or samples): the expected growth of the *mean* loss, for perplexity `Δ log ppl`.

The loss is the task's own where it has one that a gradient can follow (`objective`):
cross-entropy for perplexity and accuracy. Otherwise (no task, or a metric that compares with
the original model's outputs) it is the Gauss-Newton form of the output drift: for random
directions u, `E[(uᵀ J Δy)²] = |J Δy|²`, the squared change of the model's first output, with
the dot products summed over each sample's positions before squaring.

Each change is evaluated inside the backward hook of its site's output, so nothing beyond
autograd's own activations is kept; the cost is one forward, one backward of activations only,
and one extra product per change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from mlpdeploy.model.bundle import ModelBundle
from mlpdeploy.model.hooks import first_tensor
from mlpdeploy.model.torch_run import flatten_outputs, to_tensors

Change = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (module input, module output) -> Δ output
LossFn = Callable[[torch.Tensor, dict[str, np.ndarray]], torch.Tensor]  # (first output, batch) -> summed loss
CROSS_ENTROPY_METRICS = ("perplexity", "accuracy")
PROJECTIONS = 4  # random directions per batch for the Gauss-Newton (drift) objective
PROXY_TOKENS = 2048  # calibration tokens the proxy (and redundancy's scores) read for a language model
RUN_TOKENS = 512  # tokens per forward/backward run of the proxy (bounds its memory)


@dataclass
class Objective:
    """What the proxy differentiates: `loss(first output, batch)` over `runs` (batch, loss) pairs;
    `terms` loss terms per run (tokens, samples; the projections for drift); `grouping` says
    whether a run's dot products are squared per position or summed per sample first."""

    name: str  # "cross-entropy" | "drift"
    runs: list[tuple[dict[str, np.ndarray], LossFn]]
    terms: list[int]
    per_sample: bool


@dataclass
class ChangeStats:
    """Sums over the objective's runs for one change of one site."""

    first: float = 0.0  # Σ g·Δy
    second: float = 0.0  # Σ (g·Δy)², per position (cross-entropy) or per sample (drift)
    error: float = 0.0  # Σ |Δy|²
    reference: float = 0.0  # Σ |y|²
    terms: int = 0

    def loss_growth(self) -> float:
        """Expected growth of the mean loss: ½ Σ (g·Δy)² / terms (≥ 0)."""
        return 0.5 * self.second / self.terms if self.terms else 0.0

    def output_error(self) -> float:
        """Relative RMS output error |Δy| / |y| of the site itself."""
        return (self.error / self.reference) ** 0.5 if self.reference else 0.0

    def to_json(self) -> dict:
        return {"loss_growth": self.loss_growth(), "first_order": self.first / self.terms if self.terms else 0.0,
                "output_error": self.output_error()}


def _cross_entropy(label_key: str) -> LossFn:
    def loss(logits: torch.Tensor, batch: dict[str, np.ndarray]) -> torch.Tensor:
        labels = torch.from_numpy(np.ascontiguousarray(batch[label_key])).long().reshape(-1)
        return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels, reduction="sum")

    return loss


def _projection(seed: int) -> LossFn:
    def loss(output: torch.Tensor, _batch) -> torch.Tensor:
        direction = torch.randn(output.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
        return (output.float() * direction).sum()

    return loss


def objective(bundle: ModelBundle, batches: list[dict[str, np.ndarray]], labeled: list[dict[str, np.ndarray]] | None,
              seed: int = 0) -> Objective:
    """Cross-entropy on `labeled` batches for a perplexity or accuracy task, else output drift on `batches`."""
    task = bundle.task
    if task is not None and labeled and task.metric in CROSS_ENTROPY_METRICS:
        loss = _cross_entropy(task.label_key)
        pieces = [p for b in labeled for p in _pieces(b)]
        return Objective("cross-entropy", [(p, loss) for p in pieces], [int(np.asarray(p[task.label_key]).size) for p in pieces], False)
    runs = [(p, _projection(seed * 1000 + 10 * i + j)) for i, p in enumerate(q for b in batches for q in _pieces(b)) for j in range(PROJECTIONS)]
    return Objective("drift", runs, [1] * len(runs), True)


def _pieces(batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """`batch` in row slices of at most RUN_TOKENS tokens (an LM's logits over a large vocabulary,
    their gradient and each change of the LM head are that many rows each)."""
    first = np.asarray(next(iter(batch.values())))
    rows = first.shape[0] if first.ndim else 1
    per_row = int(np.prod(first.shape[1:])) if first.ndim >= 2 and first.dtype.kind in "iu" else 1
    step = max(1, RUN_TOKENS // max(per_row, 1))
    if step >= rows:
        return [batch]
    return [{k: v[i:i + step] for k, v in batch.items()} for i in range(0, rows, step)]


def estimate_changes(module: torch.nn.Module, goal: Objective, input_names: list[str],
                     changes: dict[str, dict[str, Change]]) -> dict[str, dict[str, ChangeStats]]:
    """`{site: {change name: ChangeStats}}` for `changes` ({module path: {name: Δ function}})."""
    modules = dict(module.named_modules())
    stats = {site: {name: ChangeStats() for name in named} for site, named in changes.items()}
    frozen = [(p, p.requires_grad) for p in module.parameters()]
    handles = []

    def watch(site: str):
        def hook(_module, args, kwargs, output):
            x, y = first_tensor((*args, *kwargs.values())), first_tensor(output)
            if y is None or not y.requires_grad:
                return
            x = x.detach() if x is not None else None
            y_value = y.detach()

            def on_grad(grad: torch.Tensor) -> None:
                g = grad.detach().float()
                with torch.no_grad():
                    reference = float(y_value.double().square().sum())
                    for name, change in changes[site].items():
                        dy = change(x, y_value).float()
                        dots = (g * dy).sum(-1).double()  # per position
                        if goal.per_sample:
                            dots = dots.reshape(dots.shape[0], -1).sum(-1) if dots.dim() else dots
                        s = stats[site][name]
                        s.first += float(dots.sum())
                        s.second += float(dots.square().sum())
                        s.error += float(dy.double().square().sum())
                        s.reference += reference

            y.register_hook(on_grad)

        return hook

    def leaf(_module, _args, output):  # token embeddings start what autograd differentiates
        return output.detach().requires_grad_(True) if isinstance(output, torch.Tensor) and output.is_floating_point() else output

    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        handles += [m.register_forward_hook(leaf) for m in modules.values() if isinstance(m, torch.nn.Embedding)]
        handles += [modules[site].register_forward_hook(watch(site), with_kwargs=True) for site in changes]
        for (batch, loss_fn), terms in zip(goal.runs, goal.terms):
            tensors = [t.float().requires_grad_(True) if t.is_floating_point() else t for t in to_tensors(batch, input_names)]
            with torch.enable_grad():
                loss_fn(flatten_outputs(module(*tensors))[0], batch).backward()
            for named in stats.values():
                for s in named.values():
                    s.terms += terms
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
    return stats


def proxy_batches(ctx) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]] | None]:
    """(calibration batches, the same rows with their labels when the task gives them): the first
    PROXY_TOKENS tokens' worth for a language model, every batch otherwise."""
    batches, labeled, task = ctx.batches, None, ctx.bundle.task
    if ctx.labeled and task is not None:
        labeled = list(task.labeled_calibration_batches(len(batches), _rows(batches[0]), ctx.seed))
    seq_len = getattr(task, "seq_len", None)
    if seq_len:
        keep, tokens = 0, 0
        while keep < len(batches) and tokens < PROXY_TOKENS:
            tokens += _rows(batches[keep]) * seq_len
            keep += 1
        batches, labeled = batches[:keep], (labeled[:keep] if labeled is not None else None)
    return batches, labeled


def _rows(batch) -> int:
    return int(np.asarray(next(iter(batch.values()))).shape[0])
