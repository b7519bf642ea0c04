"""Random small torch models from the families mlpdeploy rewrites, as bundles ready to export.

A case is plain data (`CaseSpec`: family, its parameters, a weight seed, the shapes to run), so
a failure prints as one JSON line and `python -m tests.fuzz.run --replay` rebuilds it exactly. Every
family stacks its blocks in a ModuleList called `layers` (drop-layers' blocks), with widths that
hypothesis draws from sets holding 1, odd and prime sizes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import torch
from hypothesis import strategies as st
from torch import nn

from mlpdeploy.model.bundle import ModelBundle, infer_input_specs
from mlpdeploy.model.kv_cache import with_kv_cache
from mlpdeploy.zoo.kan_layers import FANLayer, GroupRational, KANLinear
from mlpdeploy.zoo.layers import Attention, RMSNorm
from mlpdeploy.zoo.llama import LlamaConfig, LlamaLM
from mlpdeploy.zoo.mixer import MixerBlock, MixerConfig
from mlpdeploy.zoo.opt import OPTLM, OPTConfig

from ..fixtures import decomposed_rational as rational  # GR-KAN written in plain torch

WIDTHS = [1, 2, 3, 5, 7, 8, 13]  # 1, even, odd, prime
HIDDEN = [1, 2, 3, 5, 11, 16, 17]
SIZES = [1, 2, 3, 5, 7]  # batch / sequence lengths at run time
PASTS = [0, 1, 3, 6]  # KV-cache lengths at run time
ACTIVATIONS = {
    "silu": nn.functional.silu,
    "gelu": nn.functional.gelu,
    "gelu_tanh": lambda t: nn.functional.gelu(t, approximate="tanh"),
    "relu": torch.relu,
    "none": lambda t: t,
    "silu_formula": lambda t: t * torch.sigmoid(t),
}


@dataclass
class CaseSpec:
    """One generated case: which family, its parameters, the seed of its weights, the shapes it runs at."""

    family: str
    params: dict
    seed: int
    shapes: list[dict] = field(default_factory=list)  # e.g. {"batch": 3, "seq": 5, "past": 1}
    passes: list[list] = field(default_factory=list)  # [[pass name, options], ...] in the order they run

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "CaseSpec":
        return cls(**json.loads(text))


# ---- blocks -------------------------------------------------------------------------------------


def _norm(kind: str, dim: int) -> nn.Module:
    return {"rms": lambda: RMSNorm(dim), "layer": lambda: nn.LayerNorm(dim), "none": nn.Identity}[kind]()


class SeparateMLP(nn.Module):
    """LLaMA's layout: down(act(gate(x)) * up(x))."""

    def __init__(self, dim, hidden, act, bias):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(dim, hidden, bias=bias), nn.Linear(dim, hidden, bias=bias)
        self.down_proj, self.act = nn.Linear(hidden, dim, bias=bias), ACTIVATIONS[act]

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class PackedMLP(nn.Module):
    """Phi-3's layout: one gate_up linear cut in two; `gate_first` says which half is activated."""

    def __init__(self, dim, hidden, act, bias, gate_first, cut):
        super().__init__()
        self.gate_up_proj, self.down_proj = nn.Linear(dim, 2 * hidden, bias=bias), nn.Linear(hidden, dim, bias=bias)
        self.act, self.gate_first, self.cut, self.hidden = ACTIVATIONS[act], gate_first, cut, hidden

    def forward(self, x):
        y = self.gate_up_proj(x)
        if self.cut == "chunk":
            a, b = y.chunk(2, dim=-1)
        elif self.cut == "split":
            a, b = torch.split(y, [self.hidden, self.hidden], dim=-1)
        else:
            a, b = y[..., : self.hidden], y[..., self.hidden :]
        gate, up = (a, b) if self.gate_first else (b, a)
        return self.down_proj(up * self.act(gate))


class PlainMLP(nn.Module):
    """fc2(act(fc1(x))): ReLU MLPs (OPT, ViT) and KAT's MLP with a rational activation."""

    def __init__(self, dim, hidden, act: nn.Module, bias=True):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden, bias=bias), act, nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Residual(nn.Module):
    """Pre-norm `x + mlp(norm(x))` or post-norm `norm(x + mlp(x))`."""

    def __init__(self, norm: nn.Module, mlp: nn.Module, post: bool = False):
        super().__init__()
        self.norm, self.mlp, self.post = norm, mlp, post

    def forward(self, x):
        return self.norm(x + self.mlp(x)) if self.post else x + self.mlp(self.norm(x))


class PostNormBlock(nn.Module):
    """BERT's block: LN(x + attn(x)), then LN(h + mlp(h)), attention bidirectional."""

    def __init__(self, dim, heads, mlp: nn.Module):
        super().__init__()
        self.attention = Attention(dim, heads, bias=True, causal=False, out_name="o_proj")
        self.attention_norm = nn.LayerNorm(dim)
        self.mlp, self.output_norm = mlp, nn.LayerNorm(dim)

    def forward(self, x):
        x = self.attention_norm(x + self.attention(x))
        return self.output_norm(x + self.mlp(x))


class Stack(nn.Module):
    """x [batch, seq, dim] (or [batch, patches, dim]) through `layers`, then a head."""

    def __init__(self, layers: list[nn.Module], dim: int, head: bool):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.head = nn.Linear(dim, dim) if head else nn.Identity()

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


# ---- families: params -> module -----------------------------------------------------------------


def _gated_mlp(p: dict, dim: int, hidden: int) -> nn.Module:
    if p["layout"] == "separate":
        return SeparateMLP(dim, hidden, p["act"], p["bias"])
    return PackedMLP(dim, hidden, p["act"], p["bias"], p["layout"] == "packed_gate_first", p["cut"])


def _rational(p: dict, hidden: int) -> nn.Module:
    groups = math.gcd(p["groups"], hidden)
    if p["form"] == "op":  # the torch custom op: exports as one mlpdeploy::GroupRational node already
        return GroupRational(groups=groups, init="swish", form="A", shared_numerator=p["shared"])
    numerator, denominator = rational.coefficients(groups, p["shared"], seed=p["coef_seed"])
    cls = {"horner": rational.PerChannelHorner, "powers": rational.GroupedPowers, "form_b": rational.FormB,
           "signed": rational.SignedPowers}[p["form"]]
    return cls(numerator, denominator)


def build_module(spec: CaseSpec) -> nn.Module:
    p, f = spec.params, spec.family
    dim, hidden, depth = p.get("dim"), p.get("hidden"), p.get("depth")
    if f == "gated":
        layers = [Residual(_norm(p["norm"], dim), _gated_mlp(p, dim, hidden), p["post"]) for _ in range(depth)]
    elif f == "relu":
        act = {"relu": nn.ReLU(), "gelu": nn.GELU()}[p["act"]]
        layers = [Residual(_norm(p["norm"], dim), PlainMLP(dim, hidden, act, p["bias"]), p["post"]) for _ in range(depth)]
    elif f == "postnorm":
        mlp = lambda: _gated_mlp(p, dim, hidden) if p["gated"] else PlainMLP(dim, hidden, nn.ReLU())  # noqa: E731
        layers = [PostNormBlock(dim, p["heads"], mlp()) for _ in range(depth)]
    elif f == "rational":
        layers = [Residual(_norm(p["norm"], dim), PlainMLP(dim, hidden, _rational(p, hidden))) for _ in range(depth)]
    elif f == "kan":
        layers = [Residual(nn.Identity(), KANLinear(dim, dim, grid_size=p["grid"])) for _ in range(depth)]
    elif f == "fan":
        layers = [Residual(_norm(p["norm"], dim), FANLayer(dim, dim, p_ratio=p["p_ratio"], activation=p["act"])) for _ in range(depth)]
    elif f == "mixer":
        cfg = MixerConfig(dim=dim, depth=depth, tokens_hidden=p["tokens_hidden"], channels_hidden=hidden)
        layers = [MixerBlock(cfg, p["patches"]) for _ in range(depth)]
    elif f == "decoder":
        return _decoder(p)
    else:
        raise ValueError(f"unknown family {f}")
    return Stack(layers, dim, p.get("head", False))


def _decoder(p: dict) -> nn.Module:
    dim = p["heads"] * p["head_dim"]
    if p["arch"] == "llama":
        cfg = LlamaConfig(vocab_size=p["vocab"], dim=dim, n_layers=p["depth"], n_heads=p["heads"], n_kv_heads=p["kv_heads"],
                          hidden_dim=p["hidden"], max_positions=32)
        return LlamaLM(cfg)
    return OPTLM(OPTConfig(vocab_size=p["vocab"], dim=dim, n_layers=p["depth"], n_heads=p["heads"], ffn_dim=p["hidden"], max_positions=32))


def build_bundle(spec: CaseSpec) -> ModelBundle:
    """The case's model (weights from its seed, scaled so activations stay O(1)) as an export-ready bundle."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        module = build_module(spec).eval()
        with torch.no_grad():
            for name, param in module.named_parameters():
                if param.dim() >= 2 and "embed" not in name and "spline" not in name:
                    param.uniform_(-1.0, 1.0).mul_(1.0 / math.sqrt(param.shape[-1]))
                elif name.endswith("bias"):
                    param.uniform_(-0.3, 0.3)
    if spec.family == "decoder":
        from mlpdeploy.zoo.common import token_bundle

        bundle = token_bundle(module, spec.params["vocab"], 32)
        bundle.source = bundle.kind = "fuzz"
        return with_kv_cache(bundle) if spec.params["kv_cache"] else bundle
    p = spec.params
    rows = p["patches"] if spec.family == "mixer" else 4
    example = {"x": torch.randn(2, rows, p["dim"], generator=torch.Generator().manual_seed(spec.seed))}
    dynamic = {"x": {0: "batch"}} if spec.family == "mixer" else None  # token mixing fixes the patch count
    return ModelBundle(module, example, infer_input_specs(example, dynamic), ["output"], source="fuzz", kind="fuzz",
                       dim_ranges={"seq": (1, 64), "batch": (1, 64)})


# ---- hypothesis strategies ----------------------------------------------------------------------

FAMILIES = ("gated", "relu", "postnorm", "rational", "kan", "fan", "mixer", "decoder")


@st.composite
def family_params(draw, family: str) -> dict:
    width, hidden, depth = st.sampled_from(WIDTHS), st.sampled_from(HIDDEN), st.integers(1, 3)
    gated = {"act": st.sampled_from(sorted(ACTIVATIONS)), "layout": st.sampled_from(["separate", "packed_gate_first", "packed_up_first"]),
             "bias": st.booleans(), "cut": st.sampled_from(["chunk", "split", "slice"])}
    if family == "gated":
        return draw(st.fixed_dictionaries({"dim": width, "hidden": hidden, "depth": depth, "norm": st.sampled_from(["rms", "layer", "none"]),
                                           "post": st.booleans(), "head": st.booleans(), **gated}))
    if family == "relu":
        return draw(st.fixed_dictionaries({"dim": width, "hidden": hidden, "depth": depth, "norm": st.sampled_from(["layer", "none"]),
                                           "post": st.booleans(), "bias": st.booleans(), "act": st.sampled_from(["relu", "gelu"])}))
    if family == "postnorm":
        heads = draw(st.sampled_from([1, 2, 3]))
        return draw(st.fixed_dictionaries({"dim": st.sampled_from([heads * k for k in (1, 2, 3, 5)]), "heads": st.just(heads), "hidden": hidden,
                                           "depth": st.integers(1, 2), "gated": st.booleans(), **gated}))
    if family == "rational":
        return draw(st.fixed_dictionaries({"dim": width, "hidden": st.sampled_from([1, 2, 3, 4, 6, 8, 12, 15]), "depth": st.integers(1, 2),
                                           "norm": st.sampled_from(["layer", "none"]), "groups": st.sampled_from([1, 2, 3, 4]),
                                           "shared": st.booleans(), "form": st.sampled_from(["horner", "powers", "form_b", "signed", "op"]),
                                           "coef_seed": st.integers(0, 99)}))
    if family == "kan":
        return draw(st.fixed_dictionaries({"dim": width, "depth": st.integers(1, 2), "grid": st.sampled_from([1, 3, 5])}))
    if family == "fan":
        return draw(st.fixed_dictionaries({"dim": st.sampled_from([4, 5, 7, 8, 13]), "depth": st.integers(1, 2), "norm": st.sampled_from(["layer", "none"]),
                                           "p_ratio": st.sampled_from([0.25, 0.2]), "act": st.sampled_from(["gelu", "relu", "silu"])}))
    if family == "mixer":
        return draw(st.fixed_dictionaries({"dim": width, "hidden": hidden, "depth": st.integers(1, 2), "patches": st.sampled_from([1, 2, 3, 5]),
                                           "tokens_hidden": hidden}))
    heads = draw(st.sampled_from([1, 2, 3]))
    return draw(st.fixed_dictionaries({
        "arch": st.sampled_from(["llama", "opt"]), "heads": st.just(heads),
        "kv_heads": st.sampled_from([k for k in (1, 2, 3) if heads % k == 0]), "head_dim": st.sampled_from([2, 6, 8]),
        "hidden": hidden, "depth": st.integers(1, 3), "vocab": st.sampled_from([2, 7, 31]), "kv_cache": st.booleans(),
    }))


@st.composite
def shapes(draw, family: str, params: dict) -> list[dict]:
    n = draw(st.integers(1, 2))
    out = []
    for _ in range(n):
        shape = {"batch": draw(st.sampled_from(SIZES))}
        if family != "mixer":
            shape["seq"] = draw(st.sampled_from(SIZES))
        if family == "decoder" and params["kv_cache"]:
            shape["past"] = draw(st.sampled_from(PASTS))
        out.append(shape)
    return out


@st.composite
def case_specs(draw, families=FAMILIES) -> CaseSpec:
    family = draw(st.sampled_from(families))
    params = draw(family_params(family))
    return CaseSpec(family, params, draw(st.integers(0, 2**16)), draw(shapes(family, params)))
