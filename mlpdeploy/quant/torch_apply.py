"""The torch reference of a quantized model: nn.Linear weights replaced by what their codes decode to.

`quantized_linears(module, {"layers.0.mlp.down_proj": parse_format("nvfp4"), ...})` is a context
in which those linears compute with `dequantize(quantize(Wᵀ))ᵀ` (the [out, in] torch weight
quantized as the [in, out] matrix ONNX multiplies by, so blocks run along the input dim), and
get their own weights back on exit. A weight
tied to another module (an LM head and its token embedding) is swapped, never written into:
the export quantizes the head's MatMul and leaves the embedding's Gather alone. This is the
oracle a quantized graph is compared with.

`quantized_sites_copy(module, [QuantizedSite(("mlp.gate_proj", "mlp.up_proj"), fmt), ...])` does
the same for weights quantized as one matrix (a fused gate_up: gate and up stacked along their
outputs, so NVFP4's tensor scale is shared), as a rewritten graph reports them;
`quantized_sites_view` too, sharing every weight it does not quantize with the model (what
compile's validation uses: the reference then costs the quantized weights, not the model).

`int8_activations={path: block}` also emulates what ONNX Runtime's MatMulNBits does at accuracy
level 4: each row of the linear's input is cut into blocks of `block` along K and quantized to
int8 (scale = block max |a| / 127, codes round(a · 127 / max |a|), ties to even), the products
then taken with the decoded weight. On random data this matched ONNX Runtime 1.32's kernel to
~2e-7 relative (its int8·int4 dot products are exact; only float32 summation order differs).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mlpdeploy.quant.formats import Format
from mlpdeploy.quant.grid import QuantError


def dequantized_weight(weight: torch.Tensor, fmt: Format, what: str = "weight") -> torch.Tensor:
    """An nn.Linear weight [out, in] as its `fmt` codes decode, same dtype and device."""
    w_kn = weight.detach().float().cpu().numpy().T
    decoded = fmt.quantize(w_kn, what).dequantize().T
    return torch.from_numpy(decoded.copy()).to(dtype=weight.dtype, device=weight.device)


def int8_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """x with its last dim quantized to int8 per block of `block` (MatMulNBits accuracy level 4's A)."""
    k = x.shape[-1]
    pad = -k % block
    xf = torch.nn.functional.pad(x.float(), (0, pad)).reshape(*x.shape[:-1], -1, block)
    amax = xf.abs().amax(-1, keepdim=True)
    scale = amax / 127
    inverse = torch.where(amax > 0, 127 / torch.where(amax > 0, amax, torch.ones_like(amax)), torch.zeros_like(amax))
    q = torch.round(xf * inverse) * scale
    return q.reshape(*x.shape[:-1], -1)[..., :k].to(x.dtype)


def int8_input_hook(block: int):
    """A forward pre-hook giving a linear its input as int8 blocks of `block` (int8_blocks)."""

    def hook(_module, inputs):
        return (int8_blocks(inputs[0], block), *inputs[1:])

    return hook


def _set_weight(linear: torch.nn.Module, weight: torch.Tensor) -> None:
    """Give `linear` a weight of its own: a tied weight (an LM head sharing the token embedding)
    is replaced, not written into, so the module it is shared with keeps the original."""
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)


def _linears(module: torch.nn.Module, paths, kinds: tuple[type, ...] = (torch.nn.Linear,)) -> dict[str, torch.nn.Module]:
    modules = dict(module.named_modules())
    missing = [p for p in paths if not isinstance(modules.get(p), kinds)]
    if missing:
        what = " or ".join(f"nn.{k.__name__}" for k in kinds)
        raise QuantError(f"{missing[0]!r} is not an {what} of the model; quantized sites must name linear layers")
    return {p: modules[p] for p in paths}


@contextlib.contextmanager
def quantized_linears(module: torch.nn.Module, sites: dict[str, Format],
                      int8_activations: dict[str, int] | None = None) -> Iterator[dict[str, torch.nn.Linear]]:
    """Within the block, each nn.Linear at a path of `sites` computes with its quantized weight
    (and, at the paths of `int8_activations`, with int8 inputs in blocks of the given size)."""
    linears = _linears(module, sites)
    saved, handles = {}, []
    try:
        for path, fmt in sites.items():
            saved[path] = linears[path].weight
            _set_weight(linears[path], dequantized_weight(saved[path], fmt, f"{path}.weight"))
        for path, block in (int8_activations or {}).items():
            handles.append(linears[path].register_forward_pre_hook(int8_input_hook(block)))
        yield linears
    finally:
        for handle in handles:
            handle.remove()
        for path, weight in saved.items():
            linears[path].weight = weight


@dataclass(frozen=True)
class QuantizedSite:
    """One weight a graph quantized, in torch terms: the nn.Linear modules it stands for (several
    when they were quantized as one matrix, stacked along their outputs in this order), its format,
    and the block its inputs are rounded to int8 in (None: float inputs)."""

    linears: tuple[str, ...]
    format: Format
    int8_block: int | None = None


def quantized_sites_copy(module: torch.nn.Module, sites: list[QuantizedSite]) -> torch.nn.Module:
    """A deep copy of `module` whose linears (and embeddings) hold, per site, the weights its codes
    decode to (and take int8 inputs where the site says), or a one-line error when a site names no
    linear or embedding of it. Each site gets a weight of its own: a tied lm_head quantized alone
    leaves the embedding it shares a table with in float, as the graph does (an embedding's
    [vocab, dim] table is quantized like a linear's [out, in] weight: blocks along dim)."""
    clone = copy.deepcopy(module)
    for site in sites:
        linears = list(_linears(clone, site.linears, (torch.nn.Linear, torch.nn.Embedding)).values())
        weight = torch.cat([linear.weight.detach() for linear in linears])  # [N, K], outputs stacked
        decoded = dequantized_weight(weight, site.format, f"{'+'.join(site.linears)} weight")
        for linear, part in zip(linears, decoded.split([linear.weight.shape[0] for linear in linears])):
            linear.weight = torch.nn.Parameter(part.clone(), requires_grad=linear.weight.requires_grad)
        if site.int8_block:
            for linear in linears:
                linear.register_forward_pre_hook(int8_input_hook(site.int8_block))
    return clone


def quantized_sites_view(module: torch.nn.Module, sites: list[QuantizedSite]) -> torch.nn.Module:
    """What `quantized_sites_copy` computes, for the cost of the quantized weights alone: a copy of
    `module`'s structure that shares every parameter and buffer with it except the quantized
    linears' (and embeddings') weights (so writing to the view's other weights writes to `module`'s).
    A weight tied to another module (an LM head tied to the embedding) is untied: only the site
    computes with the quantized values, as in the exported graph, where the other reads its own table."""
    clone = copy.deepcopy(module, {id(t): t for t in (*module.parameters(), *module.buffers())})
    for site in sites:
        linears = list(_linears(clone, site.linears, (torch.nn.Linear, torch.nn.Embedding)).values())
        weight = torch.cat([linear.weight.detach() for linear in linears])  # [N, K], outputs stacked
        decoded = dequantized_weight(weight, site.format, f"{'+'.join(site.linears)} weight")
        for linear, part in zip(linears, decoded.split([linear.weight.shape[0] for linear in linears])):
            linear.weight = torch.nn.Parameter(part, requires_grad=linear.weight.requires_grad)
            if site.int8_block:
                linear.register_forward_pre_hook(int8_input_hook(site.int8_block))
    return clone
