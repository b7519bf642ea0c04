"""ort-fusions: onnxscript's ORT fusions on zoo graphs equal torch in ONNX Runtime CPU (with ITS
optimizations off, so only ours act), mlpdeploy's functions stay one node with unchanged bodies,
attention fusions that leave onnxscript's intermediate ops are undone, and the backend applies the
pass to every graph that is not a cached decoder and lists what fused in its info and the report."""

from __future__ import annotations

import collections
import math
import warnings

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from mlpdeploy.backends import get_backend
from mlpdeploy.backends.onnxruntime import OrtOptions
from mlpdeploy.backends.onnxruntime.passes.gqa import INTERMEDIATE_DOMAIN
from mlpdeploy.export import export_model
from mlpdeploy.model import generate_inputs, load_model
from mlpdeploy.model.torch_run import run_module
from mlpdeploy.onnx_io import load_ir
from mlpdeploy.passes import PassSpec, run_pipeline
from mlpdeploy.report import _rewrite_section

# zoo model → the fused ops onnxscript's rules give it (measured on these exports)
EXPECTED = {
    "vit-tiny": {"Attention": 2, "BiasGelu": 2},
    "opt-relu-tiny": {"MultiHeadAttention": 2},
    "llama-tiny": {"MultiHeadAttention": 2, "SkipSimplifiedLayerNormalization": 4, "SimplifiedLayerNormalization": 1},
    "mixer-tiny": {"BiasGelu": 4, "FusedMatMul": 2},
    "kat-tiny": {"Attention": 2},
}
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """name → (bundle, exported path, the fused model, its report), each made once."""
    done = {}

    def get(name, passes=()):
        key = (name, tuple(passes))
        if key not in done:
            bundle = load_model(name)
            path = export_model(bundle, tmp_path_factory.mktemp("ortfus") / f"{name}.onnx").model_path
            model = load_ir(path)
            run_pipeline(model, [PassSpec(p) for p in passes])
            exported = ir.from_proto(ir.to_proto(model))
            report = run_pipeline(model, [PassSpec("ort-fusions")])[0]
            done[key] = bundle, exported, model, report
        return done[key]

    return get


def _feed(bundle, batch, seq, seed=0, scale=1.0):
    feed = generate_inputs(bundle.inputs, seed=seed, dims={"batch": batch, "seq": seq})
    return {k: (v * np.float32(scale) if v.dtype == np.float32 else v) for k, v in feed.items()}


def _check_against_torch(h, bundle, model, feed):
    names = [s.name for s in bundle.inputs]
    with torch.no_grad():
        reference = run_module(bundle.module.eval(), feed, names)
    for k, (got, want) in enumerate(zip(h.run(model, feed), reference)):
        h.assert_close(got, want, f"output {k}")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_fused_zoo_graph_equals_torch(zoo, h, name):
    bundle, _, model, report = zoo(name)
    assert report["fusions"] == EXPECTED[name]
    assert report["skipped"] == {}
    assert not [n for n in model.graph if n.domain == INTERMEDIATE_DOMAIN]
    for batch, seq in [(1, 1), (1, 8), (3, 7), (2, 13)]:
        _check_against_torch(h, bundle, model, _feed(bundle, batch, seq, seed=batch * seq))


@SETTINGS
@given(name=st.sampled_from(["llama-tiny", "opt-relu-tiny", "vit-tiny"]), batch=st.sampled_from([1, 2, 3, 5]),
       seq=st.sampled_from([1, 2, 5, 11, 16]), scale=st.sampled_from([1e-3, 1.0, 30.0]), seed=st.integers(0, 2**16))
def test_fused_graphs_match_torch_on_random_shapes_and_magnitudes(zoo, h, name, batch, seq, scale, seed):
    bundle, _, model, _ = zoo(name)
    _check_against_torch(h, bundle, model, _feed(bundle, batch, seq, seed, scale))


@pytest.mark.parametrize("name, passes, op", [("llama-tiny", ["fuse-gated-mlp"], "GatedMLP"), ("kat-tiny", [], "GroupRational")])
def test_mlpdeploy_functions_stay_single_nodes_with_unchanged_bodies(zoo, h, name, passes, op):
    bundle, exported, model, report = zoo(name, passes)
    calls = collections.Counter(n.op_type for n in model.graph if n.domain == "mlpdeploy")
    assert calls == collections.Counter(n.op_type for n in exported.graph if n.domain == "mlpdeploy") and calls[op] >= 2
    assert report["fusions"], "the rest of the graph still fuses"
    for key, function in exported.functions.items():  # the same nodes (shape inference may annotate value types)
        assert onnx.printer.to_text(ir.to_proto(model.functions[key])) == onnx.printer.to_text(ir.to_proto(function)), key
    _check_against_torch(h, bundle, model, _feed(bundle, 3, 7, seed=3))


class SymbolicHeads(nn.Module):
    """Attention on q/k/v given per head with a symbolic head count, plus a residual LayerNorm."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(6)

    def forward(self, q, k, v, x, r):
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        return torch.matmul(torch.softmax(scores, -1), v), self.norm(x + r)


def test_attention_fusions_that_leave_intermediate_ops_are_undone(h):
    """onnxscript fuses the attention to its intermediate SDPA, but with the head count symbolic no
    rule turns that into MultiHeadAttention: the attention stays as exported (nothing of the
    intermediate domain is left), the other fusions are kept, and the report says why."""
    heads = {0: torch.export.Dim("b"), 1: torch.export.Dim("heads"), 2: torch.export.Dim("s")}
    rows = {0: torch.export.Dim("n"), 1: torch.export.Dim("t")}
    module = SymbolicHeads().eval()
    example = tuple(torch.randn(2, 3, 5, 8) for _ in range(3)) + (torch.randn(2, 4, 6), torch.randn(2, 4, 6))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.onnx.export(module, example, dynamo=True, dynamic_shapes=(heads, heads, heads, rows, rows)).model
    report = run_pipeline(model, [PassSpec("ort-fusions")])[0]
    assert "SDPA" in report["skipped"]["attention"] and INTERMEDIATE_DOMAIN in report["skipped"]["attention"]
    assert not [n for n in model.graph if n.domain == INTERMEDIATE_DOMAIN]
    assert report["fusions"] == {"FusedMatMul": 1}
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((1, 7, 3, 8)).astype(np.float32) for _ in range(3)]
    arrays += [rng.standard_normal((3, 5, 6)).astype(np.float32) for _ in range(2)]
    got = h.run(model, {i.name: a for i, a in zip(model.graph.inputs, arrays)})
    with torch.no_grad():
        want = module(*map(torch.from_numpy, arrays))
    for k in range(2):
        h.assert_close(got[k], want[k].numpy(), f"output {k}")


def test_backend_fuses_every_graph_and_lists_it(zoo, tmp_path):
    _, exported, _, _ = zoo("vit-tiny")
    path = tmp_path / "vit.onnx"
    ir.save(exported, path)
    backend = get_backend("onnxruntime")
    built = backend.build(path, tmp_path / "m.ort.onnx", OrtOptions(device="cpu"))
    fusions = built.info["fusions"]
    assert fusions["pass"] == "ort-fusions" and fusions["fusions"] == EXPECTED["vit-tiny"]
    ops = {n.op_type for n in load_ir(tmp_path / "m.ort.onnx").graph}
    assert {"Attention", "BiasGelu"} <= ops
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ort.onnx", "m.ort.session.json", "vit.onnx"]
    html = "".join(_rewrite_section({"build": built.info}))
    assert "ort-fusions (at build): 4 rewritten" in html and "BiasGelu&#x27;: 2" in html
    plain = backend.build(path, tmp_path / "p.ort.onnx", OrtOptions(device="cpu", fusions=False))
    plain_ops = collections.Counter(n.op_type for n in load_ir(tmp_path / "p.ort.onnx").graph)
    assert "fusions" not in plain.info and "Attention" not in plain_ops and plain_ops["Softmax"] == 2  # ORT alone fuses no attention


@pytest.mark.parametrize("flag", [None, "--no-ort-fusions", "--no-decoder-fusions"])
def test_cli_flag_turns_the_fusions_off_under_both_names(zoo, tmp_path, flag):
    from click.testing import CliRunner

    from mlpdeploy.cli import cli

    ir.save(zoo("vit-tiny")[1], tmp_path / "vit.onnx")
    args = ["build", str(tmp_path / "vit.onnx"), "--device", "cpu", "-o", str(tmp_path / "m.ort.onnx"), *([flag] if flag else [])]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert ("Attention" in {n.op_type for n in load_ir(tmp_path / "m.ort.onnx").graph}) == (flag is None)
