"""fuse-gated-mlp on graphs exported by torch.onnx.export(dynamo=True).

One torch module holds one gated MLP per variant (activation x layout), all reading the same
x and each returned as its own output, so one export per configuration (optimize on/off,
biases, dtype, opset) covers every variant, and each variant's numerics are checked on its own.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx_ir as ir
import pytest
import torch
from torch import nn

from mlpdeploy.scopes import module_path

D, H = 13, 19  # odd sizes: halves of 2H=38 are 19 wide

ACTS = {
    "silu": nn.functional.silu,
    "gelu": nn.functional.gelu,
    "gelu_tanh": lambda t: nn.functional.gelu(t, approximate="tanh"),
    "relu": torch.relu,
    "none": lambda t: t,
}
# Hand-written formulas (HF's NewGELU / "gelu_new", erf GELU, x*sigmoid(x)): exported as
# elementary ops at any opset; their fused activation is the name before the colon.
FORMULAS = {
    "gelu_tanh:formula": lambda t: 0.5 * t * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (t + 0.044715 * torch.pow(t, 3.0)))),
    "gelu:formula": lambda t: t * 0.5 * (1.0 + torch.erf(t / math.sqrt(2.0))),
    "silu:formula": lambda t: t * torch.sigmoid(t),
}


class Separate(nn.Module):
    """LLaMA/Mistral/Qwen2: down(act(gate(x)) * up(x))."""

    def __init__(self, act, bias):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(D, H, bias=bias), nn.Linear(D, H, bias=bias)
        self.down_proj, self.act = nn.Linear(H, D, bias=bias), act

    def forward(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class FusedGateUp(nn.Module):
    """Phi-3: one gate_up linear cut in two. `gate` says which half is activated; `cut` how."""

    def __init__(self, act, bias, gate="first", cut="chunk"):
        super().__init__()
        self.gate_up_proj, self.down_proj = nn.Linear(D, 2 * H, bias=bias), nn.Linear(H, D, bias=bias)
        self.act, self.gate, self.cut = act, gate, cut

    def forward(self, x):
        gate_up = self.gate_up_proj(x)
        if self.cut == "chunk":
            first, second = gate_up.chunk(2, dim=-1)
        elif self.cut == "split":
            first, second = torch.split(gate_up, [H, H], dim=-1)
        else:  # two slices
            first, second = gate_up[..., :H], gate_up[..., H:]
        gate, up = (first, second) if self.gate == "first" else (second, first)
        return self.down_proj(up * self.act(gate))  # Phi-3's operand order


def variants() -> dict[str, tuple[str, nn.Module]]:
    """name -> (expected activation, module builder(bias))."""
    out = {}
    for act, fn in ACTS.items():
        out[f"{act}.separate"] = (act, lambda bias, fn=fn: Separate(fn, bias))
        out[f"{act}.fused"] = (act, lambda bias, fn=fn: FusedGateUp(fn, bias))
        out[f"{act}.fused_gate_second"] = (act, lambda bias, fn=fn: FusedGateUp(fn, bias, gate="second"))
    for name, fn in FORMULAS.items():
        act, _, form = name.partition(":")
        out[f"{act}.{form}"] = (act, lambda bias, fn=fn: Separate(fn, bias))
    out["silu.fused_split_sizes"] = ("silu", lambda bias: FusedGateUp(nn.functional.silu, bias, cut="split"))
    out["silu.fused_slices"] = ("silu", lambda bias: FusedGateUp(nn.functional.silu, bias, cut="slice"))
    out["gelu.fused_slices_gate_second"] = ("gelu", lambda bias: FusedGateUp(nn.functional.gelu, bias, gate="second", cut="slice"))
    return out


VARIANTS = variants()


class Bank(nn.Module):
    """Every variant, side by side; module names `mlps.<act>_<layout>`."""

    def __init__(self, bias):
        super().__init__()
        self.mlps = nn.ModuleDict({k.replace(".", "_"): build(bias) for k, (_, build) in VARIANTS.items()})

    def forward(self, x):
        return tuple(mlp(x) for mlp in self.mlps.values())


# (optimize, bias, dtype, opset): optimize=True folds weights to [in, out] initializers; False
# keeps Transpose(W) and SplitToSequence/SequenceAt; opset 18 spells F.gelu as Erf/Tanh formulas.
# Each export takes seconds: the default run keeps three that between them cover both export
# modes, biases on and off, fp32 and fp16; the others run with `-m slow`.
CONFIGS = {
    "opt-bias": (True, True, torch.float32, 20),
    "noopt-nobias": (False, False, torch.float32, 20),
    "noopt-bias-fp16": (False, True, torch.float16, 20),
    "opt-nobias": (True, False, torch.float32, 20),
    "noopt-bias": (False, True, torch.float32, 20),
    "opt-bias-opset18": (True, True, torch.float32, 18),
    "opt-nobias-fp16": (True, False, torch.float16, 20),
}
FAST = ("opt-bias", "noopt-nobias", "noopt-bias-fp16")
PARAMS = [pytest.param(k, id=k, marks=() if k in FAST else pytest.mark.slow) for k in CONFIGS]
SHAPES = [(1, 1), (3, 7)]  # batch 1 x 1 token, odd batch x odd sequence


@pytest.fixture(scope="module", params=PARAMS)
def case(request, h):
    """Export the bank once, fuse a copy, and run both (and torch in fp32) at every shape."""
    optimize, bias, dtype, opset = CONFIGS[request.param]
    torch.manual_seed(0)
    bank = Bank(bias).eval()
    for p in bank.parameters():  # non-trivial biases and O(1) activations
        p.data.uniform_(-0.6, 0.6)
    bank = bank.to(dtype)
    original = h.export(bank, (torch.randn(2, 5, D, dtype=dtype),), optimize=optimize, opset=opset)
    fused = ir.from_proto(ir.to_proto(original))
    report = h.fuse(fused)
    np_dtype = np.float16 if dtype == torch.float16 else np.float32
    reference_bank = copy.deepcopy(bank).float()  # oracle: fp32 on the same (rounded) weights
    outputs = {}
    fused_session, original_session = h.session(fused), h.session(original)
    for batch, seq in SHAPES:
        x = torch.randn(batch, seq, D, generator=torch.Generator().manual_seed(batch * 100 + seq)).to(dtype)
        feed = {original_session.get_inputs()[0].name: x.numpy().astype(np_dtype)}
        with torch.no_grad():
            reference = [t.numpy() for t in reference_bank(x.float())]
        outputs[(batch, seq)] = (fused_session.run(None, feed), original_session.run(None, feed), reference)
    return dict(bank=bank, original=original, fused=fused, report=report, outputs=outputs, name=request.param)


def _fused_nodes(model):
    return {module_path(n): n for n in model.graph if n.domain == "mlpdeploy" and n.op_type == "GatedMLP"}


def test_every_mlp_fused_once_and_nothing_skipped(case, h):
    report, model = case["report"], case["fused"]
    assert report["skipped"] == {}
    assert report["rewritten"] == len(VARIANTS)
    nodes = _fused_nodes(model)
    assert sorted(nodes) == sorted(f"mlps.{k.replace('.', '_')}" for k in VARIANTS)  # one per MLP, scope kept
    before, after = h.op_counts(case["original"]), h.op_counts(model)
    assert after["GatedMLP"] == len(VARIANTS)
    assert after["MatMul"] + after["Gemm"] < before["MatMul"] + before["Gemm"]
    assert after["MatMul"] + after["Gemm"] == 0  # every linear belonged to an MLP
    assert not {"Sigmoid", "Erf", "Tanh", "Relu", "Gelu", "Split", "Slice", "SequenceAt", "Transpose"} & set(after)
    h.checked(model)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_activation_and_numerics(case, variant, h):
    module = f"mlps.{variant.replace('.', '_')}"
    node = _fused_nodes(case["fused"])[module]
    assert node.attributes.get_string("activation") == VARIANTS[variant][0]
    assert node.name == module
    index = list(VARIANTS).index(variant)
    for (batch, seq), (fused, unfused, reference) in case["outputs"].items():
        got = fused[index]
        assert got.shape == (batch, seq, D)
        h.assert_close(got, reference[index], f"{variant} {batch}x{seq} vs torch")
        h.assert_close(got, unfused[index], f"{variant} {batch}x{seq} vs unfused ORT")


def test_weights_prepared_once_with_names_and_dead_ones_removed(case):
    model = case["fused"]
    graph = model.graph
    used = {v.name for n in graph for v in n.inputs if v is not None}
    assert set(graph.initializers) <= used, "an initializer nobody reads was left behind"
    for path, node in _fused_nodes(model).items():
        w_gate_up, w_down = node.inputs[1], node.inputs[2]
        assert w_gate_up.is_initializer() and w_down.is_initializer()
        assert w_gate_up.name == f"{path}.gate_up_proj.weight_t" and w_down.name == f"{path}.down_proj.weight_t"
        assert w_gate_up.shape == [D, 2 * H] and w_down.shape == [H, D]
        assert w_gate_up.dtype == node.inputs[0].dtype
        assert len(node.inputs) == (5 if case["name"].split("-")[1] == "bias" else 3)


def test_fused_weight_puts_the_activated_half_first(case):
    """The gate (activated) half of W_gate_up comes first whichever half torch activated."""
    bank, model = case["bank"], case["fused"]
    for variant in ("silu.fused", "silu.fused_gate_second", "gelu.fused_slices_gate_second"):
        key = variant.replace(".", "_")
        mlp = bank.mlps[key]
        w = mlp.gate_up_proj.weight.detach().float().numpy().T  # [D, 2H] as torch lays it out
        gate_cols = slice(0, H) if mlp.gate == "first" else slice(H, 2 * H)
        up_cols = slice(H, 2 * H) if mlp.gate == "first" else slice(0, H)
        fused = _fused_nodes(model)[f"mlps.{key}"].inputs[1].const_value.numpy().astype(np.float32)
        np.testing.assert_array_equal(fused[:, :H], w[:, gate_cols])
        np.testing.assert_array_equal(fused[:, H:], w[:, up_cols])


def test_scope_metadata_names_the_mlp_module(case):
    for path, node in _fused_nodes(case["fused"]).items():
        scopes = eval(node.metadata_props["pkg.torch.onnx.name_scopes"])  # noqa: S307 - our own repr
        assert scopes == ["", path, "gated_mlp"]  # a ModuleDict adds no call scope
        classes = eval(node.metadata_props["pkg.torch.onnx.class_hierarchy"])  # noqa: S307
        assert classes[-1] == "mlpdeploy::GatedMLP" and classes[-2].endswith(("Separate", "FusedGateUp"))
        assert node.metadata_props["namespace"].endswith("/gated_mlp: mlpdeploy::GatedMLP")
        assert node.metadata_props["mlpdeploy.rewritten_by"] == "fuse-gated-mlp"
