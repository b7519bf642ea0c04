"""quantize-weights as a fuzz target: its options, and the same quantization done to the torch model.

The pass writes each site's weight as 4-bit codes (INT4 sym/asym, NVFP4, MXFP4) in the forms
ONNX Runtime's CPU build runs: MatMulNBits (4-bit; FP4 re-encoded exactly as 8-bit) or the
W4A16MatMul function. Every form decodes to exactly `QuantizedWeight.dequantize()`, so the torch
reference computes with the decoded weights and, where MatMulNBits runs at accuracy level 4,
with its inputs quantized to int8 in blocks of the format's block along K (what ONNX Runtime's
kernel does; mlpdeploy.quant.torch_apply). The reference is rebuilt from the pass's report
(`sites`: format, [K, N], the torch linears each site stands for, int8 activations), after
checking the report against the model: every linear it names must be an nn.Linear whose weight
is that [K, N].

Tolerance (`precision`, see fuzz_harness.TOLERANCE):
* accuracy levels 0–3: the products are the float32 products of the decoded weights, so the
  fp32 tolerance (1e-4 of the output scale) holds: only summation order differs.
* accuracy level 4 ("int8"): the reference rounds the same activations the same way, but a
  linear deeper than the first sees torch's activations, which differ from ONNX Runtime's in
  the last float32 bits (norms, attention, the linear before). An activation that lands within
  that difference of an int8 rounding boundary rounds the other way in one of the two: one code
  step, amax_block / 127 of the block's largest activation, times one weight row. The fuzz
  models keep activations O(1) and weights ≤ 1 / sqrt(fan_in) (fuzz_families.build_bundle), so
  one such flip moves an output by up to ~1/127 ≈ 0.8 % of the O(1) output scale: 1e-2 allows
  about one flip per output. It is still far below what skipping the quantization costs (a
  4-bit weight is off by up to half a step, amax_w / 14 for INT4 and 1/6 of the value for the
  largest E2M1 steps, at every weight at once), which tests/fuzz/test_quant_target.py shows by
  judging the output against the unquantized torch model and seeing the check fail. The int8
  emulation itself is held to 1e-4 on single linears in tests/passes/test_quantize_weights.py.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import nn

from mlpdeploy.contract import WEIGHT_BLOCKS, WEIGHT_FORMATS
from mlpdeploy.quant import parse_format
from mlpdeploy.quant.torch_apply import dequantized_weight, int8_input_hook

from .fuzz_families import CaseSpec

SCOPES = ("*", "*", "layers.0.*", "*mlp*")  # every linear (twice as likely), the first block, the MLPs


def quant_options(spec: CaseSpec) -> st.SearchStrategy:
    """A format with one of its blocks, an accuracy level 0–4, for FP4 a form, and a scope."""

    def for_format(name: str) -> st.SearchStrategy:
        options = {"format": st.just(name), "block": st.sampled_from(WEIGHT_BLOCKS[name]), "accuracy_level": st.integers(0, 4),
                   "scope": st.sampled_from(SCOPES)}
        if name in ("nvfp4", "mxfp4"):
            options["fp4_form"] = st.sampled_from(["auto", "nbits8", "function"])
        return st.fixed_dictionaries(options)

    return st.sampled_from(WEIGHT_FORMATS).flatmap(for_format)


def quant_precision(options: dict) -> str:
    """The tolerance a combination with these options is judged at (module docstring)."""
    return "int8" if int(options.get("accuracy_level", 4)) == 4 else "fp32"


def quantize_in_torch(module: nn.Module, spec: CaseSpec, options: dict, report: dict) -> str | None:
    """Give the torch linears of each site the weights its codes decode to (a fused GatedMLP
    gate_up site: the gate and up weights quantized as one matrix, as the pass does, so NVFP4's
    tensor scale is shared), and int8 inputs where the site's MatMulNBits takes them."""
    sites = report.get("sites", {})
    if len(sites) != report.get("rewritten", 0):
        return f"{report.get('rewritten')} sites rewritten but {len(sites)} recorded"
    modules = dict(module.named_modules())
    for site, info in sites.items():
        linears = [modules.get(path) for path in info["linears"]]
        if not linears or not all(isinstance(m, nn.Linear) for m in linears):
            return f"site {site} stands for {info['linears']}, which are not all nn.Linear modules of the model"
        weight = torch.cat([m.weight.detach() for m in linears])  # [N, K]
        if [weight.shape[1], weight.shape[0]] != list(info["shape"]):
            return f"site {site} has shape {info['shape']} but its linears {info['linears']} hold [K, N] {[weight.shape[1], weight.shape[0]]}"
        fmt = parse_format(info["format"])
        decoded = dequantized_weight(weight, fmt, f"{site} weight")
        with torch.no_grad():
            for linear, part in zip(linears, decoded.split([m.out_features for m in linears])):
                linear.weight.copy_(part)
        if info.get("int8_activations"):
            for linear in linears:
                linear.register_forward_pre_hook(int8_input_hook(fmt.block))
    return None
