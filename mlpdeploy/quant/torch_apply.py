"""The torch reference of a quantized model: nn.Linear weights replaced by what their codes decode to.

`quantized_linears(module, {"layers.0.mlp.down_proj": parse_format("nvfp4"), ...})` is a context
in which those linears compute with `dequantize(quantize(Wᵀ))ᵀ` (the [out, in] torch weight
quantized as the [in, out] matrix ONNX multiplies by, so blocks run along the input dim), and
get their own weights back on exit. This is the oracle a quantized graph is compared with.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch

from mlpdeploy.quant.formats import Format
from mlpdeploy.quant.grid import QuantError


def dequantized_weight(weight: torch.Tensor, fmt: Format, what: str = "weight") -> torch.Tensor:
    """An nn.Linear weight [out, in] as its `fmt` codes decode, same dtype and device."""
    w_kn = weight.detach().float().cpu().numpy().T
    decoded = fmt.quantize(w_kn, what).dequantize().T
    return torch.from_numpy(decoded.copy()).to(dtype=weight.dtype, device=weight.device)


@contextlib.contextmanager
def quantized_linears(module: torch.nn.Module, sites: dict[str, Format]) -> Iterator[dict[str, torch.nn.Linear]]:
    """Within the block, each nn.Linear at a path of `sites` computes with its quantized weight."""
    modules = dict(module.named_modules())
    missing = [p for p in sites if not isinstance(modules.get(p), torch.nn.Linear)]
    if missing:
        raise QuantError(f"{missing[0]!r} is not an nn.Linear of the model; quantized sites must name linear layers")
    saved = {}
    try:
        with torch.no_grad():
            for path, fmt in sites.items():
                linear = modules[path]
                saved[path] = linear.weight.detach().clone()
                linear.weight.copy_(dequantized_weight(linear.weight, fmt, f"{path}.weight"))
        yield {p: modules[p] for p in sites}
    finally:
        with torch.no_grad():
            for path, weight in saved.items():
                modules[path].weight.copy_(weight)


def quantized_copy(module: torch.nn.Module, sites: dict[str, Format]) -> torch.nn.Module:
    """A deep copy of `module` whose linears at `sites` keep their quantized weights (paths that
    are not nn.Linear modules of it are ignored: a fused weight's torch linears may be named
    differently)."""
    clone = copy.deepcopy(module)
    modules = dict(clone.named_modules())
    with torch.no_grad():
        for path, fmt in sites.items():
            linear = modules.get(path)
            if isinstance(linear, torch.nn.Linear):
                linear.weight.copy_(dequantized_weight(linear.weight, fmt, f"{path}.weight"))
    return clone
