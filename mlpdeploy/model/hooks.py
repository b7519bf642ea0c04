"""Capture what torch submodules receive and return, by module path (`layers.3.mlp`).

Shared by per-layer validation (outputs of each layer) and the analyses (inputs and outputs
of MLPs and their projections on calibration data).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch

# (path, module inputs, module output) → None; called on every forward of a watched module.
# The inputs are the positional arguments, then the keyword arguments' values (Hugging Face
# layers take `hidden_states=` by keyword in some versions).
Observer = Callable[[str, tuple, object], None]


def first_tensor(value) -> torch.Tensor | None:
    """`value` if it is a tensor, else the first element of a tuple/list if that is one."""
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    return value if isinstance(value, torch.Tensor) else None


@contextlib.contextmanager
def observe(module: torch.nn.Module, paths: Iterable[str], observer: Observer) -> Iterator[list[str]]:
    """Call `observer(path, inputs, output)` on every forward of each submodule in `paths`.

    Yields the paths that exist in `module`; hooks are removed on exit, also on error.
    """
    modules = dict(module.named_modules())
    found = [p for p in paths if p in modules]

    def hook_for(path: str):
        def hook(_module, args, kwargs, output) -> None:  # returns None: the module's output is left as it is
            observer(path, (*args, *kwargs.values()), output)

        return hook

    handles = [modules[p].register_forward_hook(hook_for(p), with_kwargs=True) for p in found]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def capture_outputs(module: torch.nn.Module, paths: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
    """A dict filled, during the block, with the last output tensor of each submodule in `paths`."""
    captured: dict[str, torch.Tensor] = {}

    def keep(path: str, _inputs: tuple, output) -> None:
        tensor = first_tensor(output)
        if tensor is not None:
            captured[path] = tensor.detach()

    with observe(module, paths, keep):
        yield captured
