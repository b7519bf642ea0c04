"""A torch model with some modules overridden: what a graph rewritten by an approximate pass
computes, exactly (`drop-layers` drops a sublayer = its output module gives zeros, so the
residual passes straight through; drops a block = the block gives back its input; `sparse-mlp`
= an MLP computes only its selected neurons, mlpdeploy.model.sparsity).

`override_modules(bundle, {"layers.3.self_attn.o_proj": "zero", "layers.2": "identity"})` is
the bundle validation compares such a graph with (and the planner measures a drop on): same
module paths and weights (nothing copied), the overrides active only while it runs. When the
rewrite also removed inputs and outputs (a dropped attention layer's KV cache), `inputs` and
`outputs` name those that stay: the missing inputs are fed zeros of their shape (their layer's
output is overridden, so their values never matter), the missing outputs are left out.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch

from mlpdeploy.contract import numpy_dtype
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import InputSpec, ModelBundle, dim_parts, share_tree
from mlpdeploy.model.sparsity import KIND as SPARSE
from mlpdeploy.model.sparsity import SparseSite, sparsified
from mlpdeploy.model.torch_run import flatten_outputs

ZERO, IDENTITY = "zero", "identity"


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    raise MlpdeployError("an overridden module got no tensor input to pass through")


def _replace_first(output, tensor: torch.Tensor):
    """`output` (a tensor, or a tuple/list whose first item is one) with that tensor replaced."""
    if isinstance(output, torch.Tensor):
        return tensor
    return type(output)([tensor, *output[1:]])


def _zero(_module, _args, _kwargs, output):
    first = output if isinstance(output, torch.Tensor) else output[0]
    return _replace_first(output, torch.zeros_like(first))


def _identity(_module, args, kwargs, output):
    return _replace_first(output, _first_input(args, kwargs))


HOOKS = {ZERO: _zero, IDENTITY: _identity}


def describe_override(how: str | dict) -> str:
    """One line for an override: `zero`, `identity`, or a sparse-mlp site's summary."""
    return how if isinstance(how, str) else SparseSite.from_json(how).describe()


@contextlib.contextmanager
def overridden(module: torch.nn.Module, overrides: dict[str, str | dict]) -> Iterator[None]:
    """Inside the block, each module in `overrides` gives zeros (`zero`) or its input (`identity`),
    or (a dict, `sparse-mlp`: see mlpdeploy.model.sparsity) its MLP computes only selected neurons.

    The hooks go first in line (`prepend`), so hooks that capture outputs see the overridden ones.
    """
    modules = dict(module.named_modules())
    missing = sorted(set(overrides) - set(modules))
    if missing:
        raise MlpdeployError(f"the model has no module {missing[0]!r} to override; was the graph rewritten from another model?")
    plain = {p: how for p, how in overrides.items() if isinstance(how, str)}
    sparse = [how for how in overrides.values() if not isinstance(how, str)]
    unknown = sorted({v for v in plain.values() if v not in HOOKS} | {str(v.get("kind")) for v in sparse if v.get("kind") != SPARSE})
    if unknown:
        raise MlpdeployError(f"unknown module override {unknown[0]!r}; known: {', '.join([*HOOKS, SPARSE])}")
    handles = [modules[p].register_forward_hook(HOOKS[how], with_kwargs=True, prepend=True) for p, how in plain.items()]
    try:
        with sparsified(module, [SparseSite.from_json(how) for how in sparse]):
            yield
    finally:
        for handle in handles:
            handle.remove()


class OverriddenModel(torch.nn.Module):
    """`module` run with `overrides` in force, taking the `kept` inputs and giving the kept outputs."""

    def __init__(self, bundle: ModelBundle, overrides: dict[str, str], inputs: list[str], outputs: list[str]):
        super().__init__()
        object.__setattr__(self, "inner", bundle.module)  # not a submodule: paths stay `layers.3...`
        share_tree(self, bundle.module)
        self.overrides = dict(overrides)
        self.specs = list(bundle.inputs)
        self.inputs = inputs
        self.all_outputs = bundle.output_names
        self.outputs = outputs

    def forward(self, *args):
        given = dict(zip(self.inputs, args))
        full = [given[s.name] if s.name in given else self._zeros(s, given) for s in self.specs]
        with overridden(self.inner, self.overrides):
            result = self.inner(*full)
        if not self.all_outputs or self.outputs == self.all_outputs:
            return result
        flat = flatten_outputs(result)
        return tuple(t for t, name in zip(flat, self.all_outputs) if name in self.outputs)

    def _zeros(self, spec: InputSpec, given: dict[str, torch.Tensor]) -> torch.Tensor:
        sizes = _dim_sizes(self.specs, given)
        shape = [d if isinstance(d, int) else sizes[d] for d in spec.shape]
        return torch.zeros(shape, dtype=getattr(torch, numpy_dtype(spec.dtype).name))


def _dim_sizes(specs: list[InputSpec], given: dict[str, torch.Tensor]) -> dict[str, int]:
    """Each dynamic dim's size in the given inputs; a dim only a sum dim still shows (`past`,
    once every cache input is gone) is that sum less its other parts (`past+seq` − `seq`)."""
    sizes: dict[str, int] = {}
    for spec in specs:
        if spec.name in given:
            for axis, dim in spec.dynamic_axes.items():
                sizes[dim] = int(given[spec.name].shape[axis])
    for total in [d for d in list(sizes) if dim_parts(d)]:
        parts = dim_parts(total)
        unknown = [p for p in parts if p not in sizes]
        if len(unknown) == 1:
            sizes[unknown[0]] = sizes[total] - sum(sizes[p] for p in parts if p in sizes)
    return sizes


def override_modules(bundle: ModelBundle, overrides: dict[str, str], inputs: list[str] | None = None,
                     outputs: list[str] | None = None) -> ModelBundle:
    """`bundle` with `overrides` (module path → "zero" | "identity") in force, taking only `inputs`
    and giving only `outputs` (default: all of them). The cache layout keeps only the layers whose
    cache inputs stay."""
    inputs = inputs if inputs is not None else [s.name for s in bundle.inputs]
    outputs = outputs if outputs is not None else list(bundle.output_names)
    module = OverriddenModel(bundle, overrides, inputs, outputs)
    module.eval()
    cache = bundle.cache
    if cache is not None:
        kept = [layer for layer in cache.layers if all(n in inputs for n in cache.input_names(layer))]
        cache = dataclasses.replace(cache, layers=kept)
    return dataclasses.replace(
        bundle,
        module=module,
        example_inputs={k: v for k, v in bundle.example_inputs.items() if k in inputs},
        inputs=[s for s in bundle.inputs if s.name in inputs],
        output_names=outputs,
        cache=cache,
        metadata={**bundle.metadata, "module_overrides": dict(overrides)},
    )
