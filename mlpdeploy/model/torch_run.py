"""Run a torch module on numpy inputs: the one place that converts feeds and outputs.

Inputs are passed positionally in the order of `names` (the model's input specs); outputs
come back flattened (tensor, tuple/list, dict or HF ModelOutput) as numpy arrays, bfloat16
widened to float32 (numpy has no native bfloat16), every other dtype kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

Feed = dict[str, np.ndarray]


def flatten_outputs(result) -> list[torch.Tensor]:
    """A module's outputs as a flat list of tensors (tensor, tuple/list, dict or HF ModelOutput)."""
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):  # includes transformers.ModelOutput
        result = list(result.values())
    out: list[torch.Tensor] = []
    for item in result:
        out.extend(flatten_outputs(item))
    return out


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array; bfloat16 becomes float32."""
    tensor = tensor.detach()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def to_tensors(feed: Feed, names: Sequence[str]) -> list[torch.Tensor]:
    """The feed's arrays in `names` order as tensors (sharing memory where numpy allows)."""
    return [torch.from_numpy(np.ascontiguousarray(feed[name])) for name in names]


def run_module(module: torch.nn.Module, feed: Feed, names: Sequence[str]) -> list[np.ndarray]:
    """Every output of `module(*feed[names])`, without autograd, as numpy arrays."""
    with torch.no_grad():
        return [to_numpy(t) for t in flatten_outputs(module(*to_tensors(feed, names)))]


def first_output_fn(module: torch.nn.Module, names: Sequence[str]) -> Callable[[Feed], np.ndarray]:
    """`feed → first output` of `module` (what a task's `evaluate` takes)."""
    return lambda feed: run_module(module, feed, names)[0]
