"""drop-layers on KV-cache graphs: a dropped attention layer's cache leaves the interface and the
manifest, prefill and decode steps equal the torch model with the sublayer replaced, and greedy
generation of a compiled dropped artifact equals that model token for token."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from mlpdeploy.compile import CompileOptions, compile_model
from mlpdeploy.model import load_model
from mlpdeploy.model.manifest import find_manifest
from mlpdeploy.passes import parse_pass_spec, rewrite_model
from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator


class Zero(nn.Module):
    """An attention sublayer replaced by identity on the residual (its branch gives zeros)."""

    def forward(self, x, *args, **kwargs):
        return torch.zeros_like(x)


def _counterpart(name: str, paths: list[str]) -> nn.Module:
    module = copy.deepcopy(load_model(name).module)
    for path in paths:
        parent, _, child = path.rpartition(".")
        setattr(module.get_submodule(parent), child, Zero())
    return module.eval()


@pytest.fixture(scope="module")
def dropped(zoo_export, tmp_path_factory):
    done = {}

    def get(name: str, spec: str):
        if (name, spec) not in done:
            bundle, path = zoo_export(name, kv_cache=True)
            out = tmp_path_factory.mktemp("drop-kv") / "dropped.onnx"
            result = rewrite_model(path, out, [parse_pass_spec(spec)])
            done[name, spec] = (bundle, result, find_manifest(out))
        return done[name, spec]

    return get


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_dropped_attention_takes_its_cache_along(dropped):
    _, result, manifest = dropped("llama-tiny", "drop-layers:attention=1")
    report = result.report("drop-layers")
    assert report["removed_inputs"] == ["past_key_values.1.key", "past_key_values.1.value"]
    assert report["removed_outputs"] == ["present.1.key", "present.1.value"]
    assert report["dropped"]["layers.1.self_attn"]["cache_layers"] == [1]
    assert manifest.cache["layers"] == [0]
    session = _session(result.model_path)
    assert [i.name for i in session.get_inputs()] == [i.name for i in manifest.inputs] == [
        "input_ids", "attention_mask", "position_ids", "past_key_values.0.key", "past_key_values.0.value"]
    assert [o.name for o in session.get_outputs()] == [o["name"] for o in manifest.outputs] == ["logits", "present.0.key", "present.0.value"]
    assert manifest.module_overrides() == {"layers.1.self_attn.o_proj": "zero"}


CASES = [
    ("llama-tiny", "drop-layers:scopes=layers.0.self_attn", ["layers.0.self_attn"]),
    ("llama-tiny", "drop-layers:attention=2", ["layers.0.self_attn", "layers.1.self_attn"]),
    pytest.param("opt-relu-tiny", "drop-layers:attention=1", ["layers.1.self_attn"], marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,spec,paths", CASES, ids=["llama-attn0", "llama-attn-all", "opt-attn1"])
def test_prefill_and_steps_match_the_dropped_torch_model(dropped, name, spec, paths):
    """Prefill 7 tokens, then 6 single-token steps with the cache carried over: each position's
    logits equal the uncached torch model with those attention sublayers replaced."""
    _, result, manifest = dropped(name, spec)
    kept = manifest.cache["layers"]
    assert kept == [i for i in (0, 1) if f"layers.{i}.self_attn" not in paths]
    session = _session(result.model_path)
    ids = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = _counterpart(name, paths)(ids).numpy()
        undropped = load_model(name).module(ids).numpy()
    ids = ids.numpy()
    heads, dim = manifest.cache["kv_heads"], manifest.cache["head_dim"]
    past = {f"past_key_values.{i}.{kv}": np.zeros((2, heads, 0, dim), np.float32) for i in kept for kv in ("key", "value")}
    errors = []
    for start, stop in [(0, 7), *((s, s + 1) for s in range(7, 13))]:
        feed = {"input_ids": ids[:, start:stop], "attention_mask": np.ones((2, stop), np.int64),
                "position_ids": np.broadcast_to(np.arange(start, stop), (2, stop - start)).copy(), **past}
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        errors.append(np.abs(outputs["logits"] - full[:, start:stop]).max())
        past = {f"past_key_values.{i}.{kv}": outputs[f"present.{i}.{kv}"] for i in kept for kv in ("key", "value")}
    assert max(errors) < 2e-5, errors
    assert np.abs(full - undropped).max() > 1e-2


def test_block_drop_on_a_cached_graph(dropped):
    _, result, manifest = dropped("llama-tiny", "drop-layers:blocks=1")
    assert manifest.cache["layers"] == [0] and result.report("drop-layers")["module_overrides"] == {"layers.1": "identity"}


def _torch_greedy(module: nn.Module, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, module(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    return ids[0, len(prompt):].tolist()


def test_compiled_artifact_validates_and_generates_like_the_dropped_torch_model(tmp_path):
    """llama-tiny compiled with its cache and one attention sublayer dropped: validation compares
    it with the torch model edited the same way (and passes); the runtime's loop, which feeds
    only the caches the manifest lists, generates what that model does, token for token."""
    spec = "drop-layers:scopes=layers.0.self_attn"
    report = compile_model("llama-tiny", tmp_path / "out", CompileOptions(kv_cache=True, passes=[parse_pass_spec(spec)], task_limit=4))
    assert report["passed"], report["validation"]
    assert report["kv_cache"]["layers"] == [1]
    assert report["validation"]["reference_overrides"] == {"layers.0.self_attn.o_proj": "zero"}
    assert set(report["validation"]["outputs"]) == {"logits", "present.1.key", "present.1.value"}
    generator = CachedGenerator(Engine.load(tmp_path / "out"))
    model = _counterpart("llama-tiny", ["layers.0.self_attn"])
    assert generator.generate([[3, 1, 4, 1, 5]], 12).tokens[0] == _torch_greedy(model, [3, 1, 4, 1, 5], 12)


@pytest.mark.slow
def test_greedy_generation_equals_the_dropped_torch_model(tmp_path):
    """Trained llama-small with an attention and an MLP sublayer dropped: greedy text equals the
    torch model with both replaced, token for token; the task metric is judged against the
    undropped model, so the drop's cost shows."""
    spec = "drop-layers:scopes=layers.2.self_attn+layers.1.mlp"
    report = compile_model("llama-small", tmp_path / "out", CompileOptions(kv_cache=True, passes=[parse_pass_spec(spec)], task_limit=8))
    assert report["passed"], report["validation"]
    assert report["kv_cache"]["layers"] == [0, 1, 3]
    assert report["validation"]["reference_overrides"] == {"layers.2.self_attn.o_proj": "zero", "layers.1.mlp.down_proj": "zero"}
    assert report["validation"]["outputs"]["logits"]["max_abs"] < 1e-4
    task = report["validation"]["task"]
    assert task["candidate"] > task["reference"] + 0.1
    generator = CachedGenerator(Engine.load(tmp_path / "out"))
    model = _counterpart("llama-small", ["layers.2.self_attn", "layers.1.mlp"])
    for prompt in (b"def ", b"import os\nclass "):
        assert generator.generate([list(prompt)], 32).tokens[0] == _torch_greedy(model, list(prompt), 32), prompt


def test_generation_with_every_attention_dropped(tmp_path, dropped):
    """No layer keeps a cache: the loop runs on input_ids, the mask and positions alone."""
    from mlpdeploy.backends import BuildOptions, get_backend

    _, result, manifest = dropped("llama-tiny", "drop-layers:attention=2")
    assert manifest.cache["layers"] == []
    built = get_backend("onnxruntime").build(result.model_path, tmp_path / "model.ort.onnx", BuildOptions())
    tokens = CachedGenerator(Engine.load(built.artifacts["model"])).generate([[5, 6, 7]], 6).tokens[0]
    assert tokens == _torch_greedy(_counterpart("llama-tiny", ["layers.0.self_attn", "layers.1.self_attn"]), [5, 6, 7], 6)
