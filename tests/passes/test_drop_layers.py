"""drop-layers on graphs exported from the zoo and from Hugging Face directories: dropping
nothing is the identity; dropping a sublayer equals the torch model with that sublayer replaced
by identity on the residual (built here by swapping modules, not through mlpdeploy's overrides);
op counts; nothing dead left behind; one-line errors."""

from __future__ import annotations

import copy

import numpy as np
import onnx_ir as ir
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.manifest import find_manifest
from mlpdeploy.onnx_io import load_ir
from mlpdeploy.passes import PassSpec, parse_pass_spec, rewrite_model, run_pipeline
from mlpdeploy.scopes import name_scopes


class Zero(nn.Module):
    """A sublayer replaced by identity on the residual: its branch gives zeros (`tuple`: with the
    extra element Hugging Face attention returns)."""

    def __init__(self, tuple_out: bool = False, width: int | None = None):
        super().__init__()
        self.tuple_out, self.width = tuple_out, width

    def forward(self, *args, **kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        zeros = x.new_zeros(*x.shape[:-1], self.width or x.shape[-1])
        return (zeros, None) if self.tuple_out else zeros


class Skip(nn.Module):
    """A block replaced by identity."""

    def forward(self, x, *args, **kwargs):
        return x


def _replace(module: nn.Module, path: str, new: nn.Module) -> nn.Module:
    module = copy.deepcopy(module)
    parent, _, name = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, new)
    return module.eval()


@pytest.fixture
def exported(zoo_export):
    return zoo_export


def _drop(path, spec: str) -> tuple[ir.Model, dict]:
    model = load_ir(path)
    parsed = parse_pass_spec(spec)
    return model, run_pipeline(model, [parsed])[0]


def _feeds(bundle, shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    spec = bundle.inputs[0]
    for shape in shapes:
        if spec.dtype == "int64":
            yield {spec.name: torch.randint(0, int(spec.high), shape, generator=gen)}
        else:
            yield {spec.name: torch.randn(*shape, *spec.example_shape[1:], generator=gen)}


# model, pass spec, module path replaced in torch, replacement; shapes: batch 1 / odd / prime sizes
CASES = [
    ("llama-tiny", "drop-layers:scopes=layers.0.self_attn", "layers.0.self_attn", Zero()),
    ("llama-tiny", "drop-layers:attention=1", "layers.1.self_attn", Zero()),
    ("llama-tiny", "drop-layers:mlp=1", "layers.1.mlp", Zero()),
    ("llama-tiny", "drop-layers:scopes=layers.0", "layers.0", Skip()),
    ("opt-relu-tiny", "drop-layers:scopes=layers.0.fc2", "layers.0.fc2", Zero(width=64)),  # OPT's MLP lives in its block
    ("opt-relu-tiny", "drop-layers:blocks=1", "layers.1", Skip()),
    ("vit-tiny", "drop-layers:scopes=blocks.0.attn", "blocks.0.attn", Zero()),
    ("vit-tiny", "drop-layers:scopes=blocks.1.mlp", "blocks.1.mlp", Zero()),
]
SHAPES = {"int64": [(1, 1), (1, 7), (3, 13)], "float32": [(1,), (3,)]}


@pytest.mark.parametrize("name,spec,path,replacement", CASES, ids=[f"{c[0]}:{c[1].split(':')[1]}" for c in CASES])
def test_dropping_equals_torch_with_the_sublayer_replaced(exported, h, name, spec, path, replacement):
    bundle, onnx_path = exported(name)
    model, report = _drop(onnx_path, spec)
    assert report["rewritten"] == 1 and report["skipped"] == {}, report
    assert list(report["dropped"]) == [path]
    counterpart = _replace(bundle.module, path, replacement)
    h.checked(model)
    session = h.session(model)
    for feed in _feeds(bundle, SHAPES[bundle.inputs[0].dtype]):
        with torch.no_grad():
            expected = counterpart(*feed.values()).numpy()
            undropped = bundle.module(*feed.values()).numpy()
        got = session.run(None, {k: v.numpy() for k, v in feed.items()})[0]
        h.assert_close(got, expected, f"{name} {spec} {list(feed.values())[0].shape}")
        assert np.abs(got - undropped).max() > 1e-3  # the drop did change the function


def test_hugging_face_llama(exported, hf_llama_dir, h):
    """An HF LLaMA export: its attention (which returns a tuple in torch) and a whole block."""
    bundle, onnx_path = exported(str(hf_llama_dir))
    for spec, path, replacement in [("drop-layers:attention=1", "model.model.layers.1.self_attn", Zero(tuple_out=True)),
                                    ("drop-layers:scopes=model.model.layers.0", "model.model.layers.0", Skip())]:
        model, report = _drop(onnx_path, spec)
        assert list(report["dropped"]) == [path]
        counterpart = _replace(bundle.module, path, replacement)
        for (batch, seq) in [(1, 1), (2, 9)]:
            ids = torch.randint(0, 128, (batch, seq), generator=torch.Generator().manual_seed(seq))
            with torch.no_grad():
                expected = counterpart(ids).numpy()
            h.assert_close(h.run(model, {"input_ids": ids.numpy()})[0], expected, f"{spec} {batch}x{seq}")


def test_bert_is_post_norm(exported, hf_bert_dir, h):
    """BERT: dropping the attention leaves LN(x), the LayerNorm after its residual add (the torch
    counterpart zeroes the attention's output dense); dropping a block leaves x."""
    bundle, onnx_path = exported(str(hf_bert_dir))
    layer = "model.encoder.layer"
    for spec, path, replacement in [(f"drop-layers:scopes={layer}.0.attention", f"{layer}.0.attention.output.dense", Zero(width=32)),
                                    (f"drop-layers:scopes={layer}.1.output", f"{layer}.1.output.dense", Zero(width=32)),
                                    ("drop-layers:blocks=1", f"{layer}.1", Skip())]:
        model, report = _drop(onnx_path, spec)
        assert report["rewritten"] == 1, report
        counterpart = _replace(bundle.module, path, replacement)
        ids = torch.randint(0, 128, (3, 11), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        mask[0, :4] = 0
        with torch.no_grad():
            expected = counterpart(ids, mask).numpy()
            undropped = bundle.module(ids, mask).numpy()
        got = h.run(model, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
        h.assert_close(got, expected, spec)
        assert np.abs(got - undropped).max() > 1e-3


@pytest.mark.parametrize("name", ["llama-tiny", "opt-relu-tiny", "vit-tiny"])
def test_nothing_dropped_is_the_identity(exported, h, name):
    bundle, onnx_path = exported(name)
    original = load_ir(onnx_path)
    model, report = _drop(onnx_path, "drop-layers")
    assert report == {"pass": "drop-layers", "rewritten": 0, "skipped": {}, "dropped": {}}
    assert h.op_counts(model) == h.op_counts(original) and len(model.graph.initializers) == len(original.graph.initializers)
    for feed in _feeds(bundle, SHAPES[bundle.inputs[0].dtype]):
        numpy_feed = {k: v.numpy() for k, v in feed.items()}
        np.testing.assert_array_equal(h.run(model, numpy_feed)[0], h.run(original, numpy_feed)[0])


def test_op_counts(exported, h):
    """llama-tiny (2 blocks): an attention sublayer is 1 Softmax and 6 MatMuls (q, k, v, o, QKᵀ,
    AV); an MLP 3 MatMuls (gate, up, down); a block both."""
    _, onnx_path = exported("llama-tiny")
    before = h.op_counts(load_ir(onnx_path))
    assert before["Softmax"] == 2
    expected = {"attention=1": (1, 6), "attention=2": (2, 12), "mlp=1": (0, 3), "blocks=1": (1, 9), "attention=1,mlp=2": (1, 12)}
    for options, (softmax, matmul) in expected.items():
        after = h.op_counts(_drop(onnx_path, f"drop-layers:{options}")[0])
        assert (before["Softmax"] - after["Softmax"], before["MatMul"] - after["MatMul"]) == (softmax, matmul), options


@pytest.mark.parametrize("spec", ["drop-layers:attention=1", "drop-layers:mlp=2", "drop-layers:blocks=1", "drop-layers:attention=2,mlp=2"])
def test_nothing_dead_is_left(exported, spec):
    """No initializer, node, input or shape op of the dropped parts survives."""
    _, onnx_path = exported("llama-tiny")
    model, report = _drop(onnx_path, spec)
    graph = model.graph
    assert all(v.uses() for v in graph.initializers.values())
    assert all(v.uses() or v.is_graph_output() for n in graph for v in n.outputs)
    assert all(v.uses() for v in graph.inputs)
    gone = [d["output_module"].rsplit(".", 1)[0] if d["kind"] != "block" else d["output_module"] for d in report["dropped"].values()]
    for node in graph:
        scopes = name_scopes(node)[:-1]
        assert not any(s == g or s.startswith(g + ".") for s in scopes for g in gone), (node.op_type, scopes)
    assert not [n for n in graph.initializers if any(n.startswith(g + ".") for g in gone)]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.sampled_from([1, 2, 3, 5]), seq=st.sampled_from([1, 2, 7, 11, 31, 64]))
def test_property_random_shapes(exported, h, batch, seq):
    bundle, onnx_path = exported("llama-tiny")
    model, _ = _drop(onnx_path, "drop-layers:scopes=layers.1.self_attn+layers.0.mlp")
    counterpart = _replace(_replace(bundle.module, "layers.1.self_attn", Zero()), "layers.0.mlp", Zero())
    ids = torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(batch * 100 + seq))
    with torch.no_grad():
        expected = counterpart(ids).numpy()
    h.assert_close(h.run(model, {"input_ids": ids.numpy()})[0], expected, f"{batch}x{seq}")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scale=st.sampled_from([1e-3, 1.0, 1e2, 1e4]), batch=st.sampled_from([1, 2, 7]))
def test_property_extreme_inputs(exported, h, scale, batch):
    """ViT on tiny and huge pixel values: the dropped graph still computes its torch counterpart."""
    bundle, onnx_path = exported("vit-tiny")
    model, _ = _drop(onnx_path, "drop-layers:scopes=blocks.1.attn")
    counterpart = _replace(bundle.module, "blocks.1.attn", Zero())
    pixels = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch)) * scale
    with torch.no_grad():
        expected = counterpart(pixels).numpy()
    h.assert_close(h.run(model, {"pixel_values": pixels.numpy()})[0], expected, f"scale {scale}")


def test_a_block_wins_over_its_sublayer(exported):
    _, onnx_path = exported("llama-tiny")
    _, report = _drop(onnx_path, "drop-layers:scopes=layers.1.mlp+layers.1")
    assert list(report["dropped"]) == ["layers.1"]
    assert report["skipped"] == {"layers.1.mlp": "its block layers.1 is dropped as a whole"}
    assert report["module_overrides"] == {"layers.1": "identity"}


@pytest.mark.parametrize("spec,message", [
    ("drop-layers:scopes=layers.7.mlp", r"drop-layers: 'layers.7.mlp' is no residual sublayer or block of this graph; its sites are: layers.0, layers.1, layers.0.self_attn"),
    ("drop-layers:attention=3", r"drop-layers: attention=3, but the graph has 2 attention site\(s\) left to drop: layers.0.self_attn, layers.1.self_attn"),
    ("drop-layers:scopes=layers.0+layers.1,blocks=1", r"drop-layers: blocks=1, but the graph has 0 block site\(s\) left to drop$"),
    ("drop-layers:mlp=-1", r"^pass drop-layers: mlp=-1 is too small; it must be an int >= 0$"),
])
def test_errors_leave_no_output(exported, tmp_path, spec, message):
    _, onnx_path = exported("llama-tiny")
    out = tmp_path / "dropped.onnx"
    with pytest.raises(MlpdeployError, match=message):
        rewrite_model(onnx_path, out, [parse_pass_spec(spec)])
    assert not list(tmp_path.iterdir())


def test_plan_sites_exclude_counts(exported, tmp_path):
    _, onnx_path = exported("llama-tiny")
    spec = PassSpec("drop-layers", {"mlp": 1}, sites={"layers.0.mlp": {}})
    with pytest.raises(MlpdeployError, match=r"drop-layers from a plan takes the plan's sites; drop the mlp option\(s\)"):
        rewrite_model(onnx_path, tmp_path / "x.onnx", [spec])
    assert not list(tmp_path.iterdir())
    result = rewrite_model(onnx_path, tmp_path / "y.onnx", [PassSpec("drop-layers", sites={"layers.0.mlp": {"kind": "mlp"}})])
    assert list(result.report("drop-layers")["dropped"]) == ["layers.0.mlp"]
    assert find_manifest(tmp_path / "y.onnx").module_overrides() == {"layers.0.mlp.down_proj": "zero"}
