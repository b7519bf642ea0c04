"""Every failure the fuzzer found, replayed as a named test (the smallest spec that showed it)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from fuzz_families import CaseSpec
from fuzz_harness import run_case


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
