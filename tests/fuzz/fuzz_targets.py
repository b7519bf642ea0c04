"""The passes the fuzzer drives, one registered entry each: pass name → which generated models it
applies to, a hypothesis strategy for its options, the precision its result is judged at, how
many sites it must rewrite when it runs alone, and — for an approximate pass — how to apply the
same approximation to the torch model (the reference its output must then match exactly).

A new pass joins the fuzzer with one `TARGETS` entry (quantize-weights' pieces live in fuzz_quant.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from hypothesis import strategies as st
from torch import nn

from .fuzz_families import CaseSpec
from .fuzz_quant import quant_options, quant_precision, quantize_in_torch

Options = Callable[[CaseSpec], st.SearchStrategy]
# (torch module, case, the pass's options, its report) → edits the module in place; returns a problem, or None
EditReference = Callable[[nn.Module, CaseSpec, dict, dict], "str | None"]


@dataclass(frozen=True)
class FuzzTarget:
    applies: Callable[[CaseSpec], bool] = lambda spec: True
    options: Options = lambda spec: st.just({})
    precision: str | Callable[[dict], str] = "fp32"  # tolerance its output is judged at (or: options → that)
    expected_sites: Callable[[CaseSpec], int | None] = lambda spec: None  # rewrites when run alone on the export (None: unchecked)
    edit_reference: EditReference | None = None  # approximate passes: the same approximation, in torch
    standard_ops: bool = True  # its output passes onnx.checker (False: ONNX Runtime contrib ops in the default domain)


# ---- fuse-gated-mlp / fuse-group-rational: which sites a family has -------------------------------


def _gated_mlps(spec: CaseSpec) -> int | None:
    p = spec.params
    if spec.family == "gated" or (spec.family == "postnorm" and p["gated"]):
        return p["depth"]
    if spec.family == "decoder":
        return p["depth"] if p["arch"] == "llama" else 0
    if spec.family in ("relu", "mixer", "kan", "fan", "rational"):
        return 0
    return None


def _rationals(spec: CaseSpec) -> int | None:
    if spec.family != "rational":
        return 0
    return spec.params["depth"] if spec.params["form"] in ("horner", "powers", "form_b") else 0


# ---- drop-layers: options, and the same drop done to the torch model -----------------------------

KINDS = {"decoder": ("attention", "mlp", "blocks"), "postnorm": ("attention", "mlp", "blocks")}


def _drop_options(spec: CaseSpec) -> st.SearchStrategy:
    kinds = KINDS.get(spec.family, ("mlp", "blocks"))
    depth = spec.params["depth"]
    most = {"mlp": 2 * depth} if spec.family == "mixer" else {}
    return st.sampled_from(kinds).flatmap(lambda kind: st.integers(0, most.get(kind, depth)).map(lambda n: {kind: n}))


class ZeroOutput(nn.Module):
    """The module, its (first) output replaced by zeros: a dropped residual branch adds nothing."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return torch.zeros_like(out)
        return type(out)([torch.zeros_like(out[0]), *out[1:]])


class PassThrough(nn.Module):
    """A dropped block: gives back its input (and, in a cached step, the past it was given)."""

    def forward(self, x, *args, **kwargs):
        cache = kwargs.get("cache", args[-1] if args else None)
        if isinstance(cache, tuple) and len(cache) == 3:
            return x, cache[0], cache[1]
        return x


def _replace(module: nn.Module, path: str, new: Callable[[nn.Module], nn.Module]) -> None:
    parent, _, name = path.rpartition(".")
    owner = module.get_submodule(parent) if parent else module
    setattr(owner, name, new(getattr(owner, name)))


def drop_in_torch(module: nn.Module, spec: CaseSpec, options: dict, report: dict) -> str | None:
    """Drop in torch what the pass says it dropped, after checking it dropped what was asked: the
    `n` deepest sites of the kind (a site: attention or MLP sublayer, or a block `layers.i`)."""
    (kind, n), = options.items()
    dropped = report.get("dropped", {})
    if len(dropped) != n:
        return f"asked to drop {n} {kind}, dropped {sorted(dropped)} (skipped: {report.get('skipped')})"
    depth = spec.params["depth"]
    per_block = 2 if spec.family == "mixer" and kind == "mlp" else 1  # token- and channel-mixing MLPs
    sites = [i for i in range(depth) for _ in range(per_block)]
    blocks = sorted(int(d["block"].rpartition(".")[2]) for d in dropped.values())
    if blocks != sites[len(sites) - n:]:
        return f"{kind}={n} should drop in blocks {sites[len(sites) - n:]}, dropped {sorted(dropped)}"
    want = {"blocks": "block", "attention": "attention", "mlp": "mlp"}[kind]
    names = dict(module.named_modules())
    for site, info in dropped.items():
        if info["kind"] != want or site not in names:
            return f"dropped {site} ({info['kind']}), which is no {want} module of the model"
        _replace(module, site, (lambda _: PassThrough()) if want == "block" else ZeroOutput)
    return None


# ---- sparse-mlp: options, and the same neuron selection applied to the torch model ---------------


def _sparse_options(spec: CaseSpec) -> st.SearchStrategy:
    p = spec.params
    widest_k = min(w for w in (p.get("hidden"), p.get("tokens_hidden")) if w) if p.get("hidden") else 1
    return st.fixed_dictionaries({"k": st.integers(1, widest_k), "threshold": st.sampled_from([0.0, 0.05, 0.3, 1.0])})


def sparsify_in_torch(module: nn.Module, spec: CaseSpec, options: dict, report: dict) -> str | None:
    """Select in torch the neurons the pass's sites select (mlpdeploy.model.sparsity), kept in
    force for the module's lifetime."""
    import contextlib

    from mlpdeploy.model.sparsity import SparseSite, sparsified

    sites = [SparseSite.from_json(data) for data in report.get("module_overrides", {}).values()]
    if len(sites) != report.get("rewritten", 0):
        return f"{report.get('rewritten')} sites rewritten but {len(sites)} selections recorded"
    stack = contextlib.ExitStack()
    stack.enter_context(sparsified(module, sites))
    module._mlpdeploy_fuzz_sparsity = stack  # the hooks live as long as the module
    return None


# Registered passes the fuzzer does not drive yet, with the reason (the registry test accepts these).
NOT_YET_FUZZED: dict[str, str] = {
    "quantize-embedding": "the fuzzed decoders' embedding dims (heads x head_dim <= 24) are below one 32-value block, so it would "
                          "never rewrite; tests/backends/onnxruntime/passes/test_quantize_embedding.py draws table sizes with hypothesis",
    "draft-heads": "needs heads trained for the drawn model (its artifact option); equality with the torch heads over shapes and "
                   "slices is tested in tests/passes/test_draft_heads_pass.py",
}

TARGETS: dict[str, FuzzTarget] = {
    "fuse-gated-mlp": FuzzTarget(expected_sites=_gated_mlps),
    "fuse-group-rational": FuzzTarget(applies=lambda spec: spec.family in ("rational", "gated", "fan"), expected_sites=_rationals),
    "drop-layers": FuzzTarget(options=_drop_options, edit_reference=drop_in_torch),
    "convert-precision": FuzzTarget(options=lambda spec: st.just({"precision": "fp16"}), precision="fp16"),
    "ort-decoder": FuzzTarget(applies=lambda spec: spec.family == "decoder" and spec.params["kv_cache"], standard_ops=False),
    "ort-fusions": FuzzTarget(applies=lambda spec: not (spec.family == "decoder" and spec.params["kv_cache"]), standard_ops=False),
    "sparse-mlp": FuzzTarget(applies=lambda spec: spec.family in ("gated", "relu", "postnorm", "decoder"), options=_sparse_options,
                             edit_reference=sparsify_in_torch),
    "quantize-weights": FuzzTarget(options=quant_options, precision=quant_precision, edit_reference=quantize_in_torch),
}
