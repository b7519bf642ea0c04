"""fuse-gated-mlp on tiny random-weight Hugging Face causal LMs (built from configs, nothing
downloaded), exported through mlpdeploy's own HF path: every MLP fused, logits unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers", reason="needs the hf extra")

from mlpdeploy.compile import CompileOptions, compile_model  # noqa: E402
from mlpdeploy.export.torch_export import export_model  # noqa: E402
from mlpdeploy.model.source import load_model  # noqa: E402
from mlpdeploy.onnx_io import load_ir  # noqa: E402
from mlpdeploy.passes import pass_report  # noqa: E402
from mlpdeploy.passes.pipeline import PassSpec  # noqa: E402
from mlpdeploy.scopes import module_path  # noqa: E402
from mlpdeploy.validate.layers import layer_values  # noqa: E402

LAYERS = 2
FAMILIES = {
    # family: (config class, model class, linears per MLP before fusion)
    "llama": ("LlamaConfig", "LlamaForCausalLM", 3),  # separate gate_proj / up_proj
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", 3),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", 2),  # one gate_up_proj, gate = first half
    "mistral": ("MistralConfig", "MistralForCausalLM", 3),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", 3),  # GeGLU: gelu_pytorch_tanh
}
ACTIVATION = {"gemma": "gelu_tanh"}
SLOW = ("mistral", "gemma")  # same exports again, each a few seconds: `-m slow`


def _config(family: str):
    cls = getattr(transformers, FAMILIES[family][0])
    return cls(
        vocab_size=96, hidden_size=32, intermediate_size=56, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )


def _save(family: str, directory):
    torch.manual_seed(0)
    model = getattr(transformers, FAMILIES[family][1])(_config(family))
    with torch.no_grad():  # random, non-zero biases where the family has them (Qwen2 attention)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
    model.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module", params=[pytest.param(f, id=f, marks=pytest.mark.slow if f in SLOW else ()) for f in FAMILIES])
def family(request, tmp_path_factory, h):
    name = request.param
    directory = _save(name, tmp_path_factory.mktemp("hf") / name)
    bundle = load_model(str(directory))
    exported = export_model(bundle, directory.parent / f"{name}.onnx")
    original = load_ir(exported.model_path)
    fused = load_ir(exported.model_path)
    report = h.fuse(fused)
    return dict(name=name, bundle=bundle, original=original, fused=fused, report=report)


def test_every_mlp_fused(family, h):
    report, fused = family["report"], family["fused"]
    assert report["rewritten"] == LAYERS and report["skipped"] == {}, report
    paths = sorted(module_path(n) for n in fused.graph if n.op_type == "GatedMLP")
    assert paths == [f"model.model.layers.{i}.mlp" for i in range(LAYERS)]
    assert {site["activation"] for site in report["sites"].values()} == {ACTIVATION.get(family["name"], "silu")}
    linears = FAMILIES[family["name"]][2]
    before, after = h.op_counts(family["original"]), h.op_counts(fused)
    assert before["MatMul"] - after["MatMul"] == linears * LAYERS  # fewer MatMul nodes, by the MLPs'
    h.checked(fused)


def test_logits_match(family, h):
    bundle = family["bundle"]
    fused, original = h.session(family["fused"]), h.session(family["original"])
    for batch, seq in [(1, 1), (1, 5), (3, 17)]:
        ids = torch.randint(0, 96, (batch, seq), generator=torch.Generator().manual_seed(seq))
        with torch.no_grad():
            reference = bundle.module(ids).numpy()
        got = fused.run(None, {"input_ids": ids.numpy()})[0]
        h.assert_close(got, reference, f"{family['name']} {batch}x{seq} vs torch")
        h.assert_close(got, original.run(None, {"input_ids": ids.numpy()})[0], "vs unfused ORT")


def test_fused_weight_matches_the_modules(family):
    """W_gate_up = [W_gate | W_up] as [in, out], gate half first (Phi-3 activates its FIRST half)."""
    module = family["bundle"].module.model
    fused = {module_path(n): n for n in family["fused"].graph if n.op_type == "GatedMLP"}
    for i, layer in enumerate(module.model.layers):
        mlp = layer.mlp
        if family["name"] == "phi3":
            gate, up = mlp.gate_up_proj.weight.detach().chunk(2, dim=0)
        else:
            gate, up = mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()
        node = fused[f"model.model.layers.{i}.mlp"]
        np.testing.assert_array_equal(node.inputs[1].const_value.numpy(), torch.cat([gate, up]).T.numpy())
        np.testing.assert_array_equal(node.inputs[2].const_value.numpy(), mlp.down_proj.weight.detach().T.numpy())


def test_per_layer_validation_finds_the_fused_mlps(family):
    found, _ = layer_values(family["fused"])
    for i in range(LAYERS):
        value = found[f"model.model.layers.{i}.mlp"]
        assert value.producer().op_type == "GatedMLP"


def test_llama_dir_compiles_with_the_pass(tmp_path):
    """The issue's bar: an HF LLaMA directory compiles with --pass fuse-gated-mlp and validates."""
    directory = _save("llama", tmp_path / "llama")
    options = CompileOptions(passes=[PassSpec("fuse-gated-mlp")])
    report = compile_model(str(directory), tmp_path / "out", options)
    rewrite = report["stages"]["rewrite"]
    assert pass_report(rewrite["passes"], "fuse-gated-mlp")["rewritten"] == LAYERS
    assert rewrite["op_counts_after"]["mlpdeploy::GatedMLP"] == LAYERS
    assert report["passed"], report["validation"]
