"""Every failure the fuzzer found, replayed as a named test (the smallest spec that showed it)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from .fuzz_families import CaseSpec
from .fuzz_harness import run_case


def replay(spec: dict):
    with tempfile.TemporaryDirectory(prefix="mlpdeploy-fuzz-") as tmp:
        result = run_case(CaseSpec(**spec), Path(tmp))
    assert result.checks > 0
    assert not result.failures, "\n".join(result.failures)
    return result


def test_drop_layers_finds_residual_branches_computed_by_kan_ops():
    """drop-layers found no sites in a residual stack of FANLayer / BSplineKAN layers: a branch had
    to hold a MatMul, and those ops are one mlpdeploy node each ('0 block site(s) left to drop')."""
    replay({"family": "fan", "params": {"act": "silu", "depth": 2, "dim": 4, "norm": "layer", "p_ratio": 0.2},
            "passes": [["drop-layers", {"blocks": 1}]], "seed": 57857, "shapes": [{"batch": 2, "seq": 1}]})
    replay({"family": "kan", "params": {"depth": 2, "dim": 3, "grid": 3}, "passes": [["drop-layers", {"mlp": 1}]],
            "seed": 5, "shapes": [{"batch": 2, "seq": 3}]})


def test_ort_decoder_keeps_attention_whose_head_size_is_not_a_multiple_of_8():
    """ort-decoder fused attention with head size 2 into GroupQueryAttention, which ONNX Runtime's CPU
    kernel then refused at run time ("head_size must be a multiple of 8"): a --kv-cache build that
    could not run. Now the attention stays unfused, with that reason."""
    spec = {"family": "decoder", "params": {"arch": "llama", "depth": 1, "head_dim": 2, "heads": 2, "hidden": 3, "kv_cache": True,
                                            "kv_heads": 1, "vocab": 7},
            "passes": [["ort-decoder", {}]], "seed": 3, "shapes": [{"batch": 2, "seq": 3, "past": 2}]}
    report, = replay(spec).reports["ort-decoder"]
    assert "head size 2 is not a multiple of 8" in report["skipped"]["attention"]
    assert report["fusions"].get("GroupQueryAttention", 0) == 0


def test_drop_layers_finds_mlps_after_sparse_mlp():
    """drop-layers run after sparse-mlp found no MLP left to drop ('0 mlp site(s) left'): a residual
    branch had to hold a MatMul, and a rewritten MLP is one SparseMLP node."""
    result = replay({"family": "relu", "params": {"act": "relu", "bias": False, "depth": 3, "dim": 8, "hidden": 16, "norm": "none", "post": False},
                     "passes": [["sparse-mlp", {"k": 3, "threshold": 0.0}], ["drop-layers", {"mlp": 1}]], "seed": 1,
                     "shapes": [{"batch": 2, "seq": 5}]})
    sparse, drop = result.reports["sparse-mlp:k=3,threshold=0.0 → drop-layers:mlp=1"]
    assert sparse["rewritten"] == 3 and drop["rewritten"] == 1


def test_quantize_weights_fp4_function_form_inside_an_expanded_gated_mlp():
    """fuse-gated-mlp → quantize-weights with fp4_form=function wrote a model that could not be
    serialized: the W4A16MatMul replacing a MatMul of the expanded GatedMLP body (here the biased
    one, whose input is the body's own Add) took its input's type, and an inlined body's values
    have none (Tensor(None))."""
    spec = {"family": "gated", "params": {"act": "silu", "bias": True, "cut": "chunk", "depth": 1, "dim": 5, "head": False, "hidden": 3,
                                          "layout": "separate", "norm": "none", "post": False},
            "passes": [["fuse-gated-mlp", {}], ["quantize-weights", {"format": "nvfp4", "block": 16, "accuracy_level": 0, "scope": "*",
                                                                    "fp4_form": "function"}]],
            "seed": 3, "shapes": [{"batch": 1, "seq": 2}]}
    fused, quant = replay(spec).reports["fuse-gated-mlp → quantize-weights:format=nvfp4,block=16,accuracy_level=0,scope=*,fp4_form=function"]
    assert fused["rewritten"] == 1 and set(quant["sites"]) == {"layers.0.mlp.gate_up", "layers.0.mlp.down"}
    assert all(site["form"] == "W4A16MatMul (function)" for site in quant["sites"].values())


def test_quantize_weights_then_fp16_types_the_bias_add_after_matmul_nbits():
    """quantize-weights → convert-precision fp16 gave ONNX Runtime a model it refused ("Type
    parameter (T) of Optype (Add) bound to different types (tensor(float16) and tensor(float))"):
    the MatMulNBits output had no type, so the bias Add after it looked constant-fed and stayed fp32."""
    replay({"family": "mixer", "params": {"depth": 1, "dim": 1, "hidden": 16, "patches": 5, "tokens_hidden": 17},
            "passes": [["quantize-weights", {"accuracy_level": 1, "block": 16, "format": "nvfp4", "fp4_form": "nbits8", "scope": "*"}],
                       ["convert-precision", {"precision": "fp16"}]], "seed": 276, "shapes": [{"batch": 2}]})


def test_fuse_gated_mlp_quantize_weights_then_fp16_serializes():
    """fuse-gated-mlp → quantize-weights → convert-precision fp16 wrote a model that could not be
    serialized (a value typed Tensor(None)): the expanded GatedMLP body's values carry no types and
    ONNX shape inference stopped at the untyped MatMulNBits, so convert-precision could not type them."""
    replay({"family": "gated", "params": {"act": "gelu", "bias": False, "cut": "chunk", "depth": 1, "dim": 1, "head": False, "hidden": 1,
                                          "layout": "separate", "norm": "rms", "post": False},
            "passes": [["fuse-gated-mlp", {}], ["quantize-weights", {"accuracy_level": 0, "block": 32, "format": "int4", "scope": "*"}],
                       ["convert-precision", {"precision": "fp16"}]], "seed": 5, "shapes": [{"batch": 2, "seq": 3}]})


def test_quantize_weights_reports_the_packed_gate_up_linear_of_a_fused_mlp():
    """After fuse-gated-mlp on a packed gate_up MLP (Phi-3's layout), quantize-weights reported its
    gate_up weight as standing for `mlp.gate_proj` and `mlp.up_proj`, modules the model does not
    have: a reference built from the report (compile's validation reference) silently kept
    that weight unquantized. fuse-gated-mlp now records the linears it fused on the node."""
    for layout in ("packed_gate_first", "packed_up_first"):
        spec = {"family": "gated", "params": {"act": "silu", "bias": True, "cut": "split", "depth": 1, "dim": 5, "head": False, "hidden": 3,
                                              "layout": layout, "norm": "none", "post": False},
                "passes": [["fuse-gated-mlp", {}], ["quantize-weights", {"accuracy_level": 0, "block": 32, "format": "int4", "scope": "*"}]],
                "seed": 11, "shapes": [{"batch": 2, "seq": 3}]}
        _, quant = replay(spec).reports["fuse-gated-mlp → quantize-weights:accuracy_level=0,block=32,format=int4,scope=*"]
        assert quant["sites"]["layers.0.mlp.gate_up"]["linears"] == ["layers.0.mlp.gate_up_proj"]


def test_fp16_keeps_int8_matmul_nbits_in_fp32():
    """quantize-weights at accuracy level 4 → convert-precision fp16 was off by 0.48 (tolerance 0.07):
    in this graph ONNX Runtime 1.32's CPU MatMulNBits with fp16 activations handed the bias Add after
    it zeros (the Add gave the bias alone), right again once its output was also a graph output; a
    lone MatMulNBits → Add did not show it. convert-precision now keeps level-4 MatMulNBits in fp32."""
    spec = {"family": "relu", "params": {"act": "gelu", "bias": True, "depth": 3, "dim": 13, "hidden": 5, "norm": "layer", "post": True},
            "passes": [["quantize-weights", {"accuracy_level": 4, "block": 32, "format": "mxfp4", "fp4_form": "auto", "scope": "layers.0.*"}],
                       ["convert-precision", {"precision": "fp16"}]], "seed": 10209, "shapes": [{"batch": 1, "seq": 3}]}
    replay(spec)
    spec["passes"][0][1] = {"accuracy_level": 4, "block": 64, "format": "int4asym", "scope": "layers.0.*"}
    replay(spec)


def test_drop_layers_drops_an_opt_mlp_after_sparse_mlp():
    """After sparse-mlp on OPT (whose block holds fc1/fc2 itself), the SparseMLP node sat in the block's
    own scope, so drop-layers found no MLP branch ('mlp=2, but the graph has 0 mlp site(s) left to
    drop'). The node now names the module its value came from (fc2), the branch's site as before."""
    spec = {"family": "decoder", "params": {"arch": "opt", "depth": 2, "head_dim": 8, "heads": 2, "hidden": 2, "kv_cache": True,
                                            "kv_heads": 2, "vocab": 7},
            "passes": [["sparse-mlp", {"k": 2, "threshold": 0.3}], ["drop-layers", {"mlp": 2}]], "seed": 0,
            "shapes": [{"batch": 1, "seq": 3, "past": 2}]}
    report = replay(spec).reports["sparse-mlp:k=2,threshold=0.3 → drop-layers:mlp=2"][1]
    assert report["rewritten"] == 2 and not report["skipped"]
