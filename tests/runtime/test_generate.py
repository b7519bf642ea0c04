"""Generation from a compiled --kv-cache artifact: greedy text equals torch's, token for token."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mlpdeploy.cli import cli
from mlpdeploy.compile import CompileOptions, compile_model
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model import load_model
from mlpdeploy.passes import PassSpec
from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator, Sampling


@pytest.fixture(scope="module")
def llama_small_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "llama-small"
    report = compile_model("llama-small", out, CompileOptions(kv_cache=True, passes=[PassSpec("fuse-gated-mlp")], task_limit=16))
    assert report["passed"] and report["kv_cache"]["layers"] == [0, 1, 2, 3]
    return out


def _torch_greedy(name: str, prompt: list[int], n: int) -> list[int]:
    model = load_model(name).module
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    return ids[0, len(prompt):].tolist()


def test_greedy_matches_torch(llama_small_dir):
    generator = CachedGenerator(Engine.load(llama_small_dir))
    for prompt in (b"def ", b"import os\nclass ", b"x"):
        result = generator.generate([list(prompt)], 40)
        assert result.tokens[0] == _torch_greedy("llama-small", list(prompt), 40), prompt
        assert result.finish == ["length"] and len(result.step_seconds) == 39


def test_shared_cache_buffer_and_per_step_cache_agree(tmp_path):
    """The default build shares one cache buffer per layer (GroupQueryAttention appends in place);
    --no-ort-fusions keeps the exported attention, whose cache grows by a copy each step."""
    from mlpdeploy.backends import get_backend
    from mlpdeploy.backends.onnxruntime import OrtOptions
    from mlpdeploy.export import export_model
    from mlpdeploy.model.kv_cache import with_kv_cache

    exported = export_model(with_kv_cache(load_model("llama-tiny")), tmp_path / "m.onnx")
    backend = get_backend("onnxruntime")
    backend.build(exported.model_path, tmp_path / "shared.ort.onnx", OrtOptions(device="cpu"))
    backend.build(exported.model_path, tmp_path / "plain.ort.onnx", OrtOptions(device="cpu", fusions=False))
    shared, plain = Engine.load(tmp_path / "shared.ort.onnx"), Engine.load(tmp_path / "plain.ort.onnx")
    assert shared.cache.shared_buffer and not plain.cache.shared_buffer
    prompts = [list(b"def __init__(self"), list(b"for ")]
    together = CachedGenerator(shared).generate(prompts, 20).tokens
    assert together == CachedGenerator(plain).generate(prompts, 20).tokens
    assert together[1] == _torch_greedy("llama-tiny", prompts[1], 20)


def test_batch_of_different_lengths_matches_each_prompt_alone(llama_small_dir):
    generator = CachedGenerator(Engine.load(llama_small_dir))
    prompts = [list(b"def __init__(self"), list(b"for "), list(b"\n")]
    together = generator.generate(prompts, 16).tokens
    assert together == [generator.generate([p], 16).tokens[0] for p in prompts]


def test_stop_tokens_and_streaming(llama_small_dir):
    generator = CachedGenerator(Engine.load(llama_small_dir))
    full = generator.generate([list(b"def ")], 30).tokens[0]
    stop = full[5]
    seen = []
    result = generator.generate([list(b"def ")], 30, stop_tokens=[stop], on_token=lambda row, t: seen.append((row, t)))
    first = full.index(stop)
    assert result.tokens[0] == full[: first + 1] and result.finish == ["stop"] and seen == [(0, t) for t in full[: first + 1]]


def test_sampling():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 50))
    greedy = logits.argmax(-1)
    assert (Sampling(temperature=1.0, top_k=1).pick(logits, rng) == greedy).all()
    assert (Sampling(temperature=1.0, top_p=1e-9).pick(logits, rng) == greedy).all()
    a = Sampling(temperature=0.7, top_k=10, seed=3)
    first = [a.pick(logits, np.random.default_rng(3)) for _ in range(2)]
    assert (first[0] == first[1]).all()
    top10 = np.argsort(-logits, -1)[:, :10]
    draws = np.stack([Sampling(temperature=2.0, top_k=10).pick(logits, rng) for _ in range(200)])
    assert all(set(draws[:, row]) <= set(top10[row]) for row in range(4))
    with pytest.raises(MlpdeployError, match="sampling needs temperature >= 0"):
        Sampling(temperature=-1)


def test_errors(llama_small_dir, tmp_path):
    generator = CachedGenerator(Engine.load(llama_small_dir))
    with pytest.raises(MlpdeployError, match="exceeds the model's 256 positions"):
        generator.generate([[1] * 250], 10)
    with pytest.raises(MlpdeployError, match="every prompt needs at least one token"):
        generator.generate([[]], 10)
    plain = tmp_path / "plain"
    compile_model("llama-tiny", plain, CompileOptions(task_limit=8))
    with pytest.raises(MlpdeployError, match="has no KV cache; export or compile the decoder with --kv-cache"):
        CachedGenerator(Engine.load(plain))
    with pytest.raises(MlpdeployError, match="is a directory without report.json"):
        Engine.load(tmp_path)


def test_cli(llama_small_dir):
    result = CliRunner().invoke(cli, ["generate", str(llama_small_dir), "--prompt", "def ", "--max-new-tokens", "24"])
    assert result.exit_code == 0, result.output
    expected = bytes(_torch_greedy("llama-small", list(b"def "), 24)).decode()
    assert result.output.startswith("def " + expected) and "tokens/s" in result.output
    result = CliRunner().invoke(cli, ["generate", str(llama_small_dir), "--prompt", "x", "--prompt-ids", "1,2"])
    assert result.exit_code == 2 and "give exactly one of --prompt TEXT and --prompt-ids" in result.output


def test_bench_decode_cli(llama_small_dir, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", str(llama_small_dir), "--decode", "--context", "8", "--context", "40",
                                      "--new-tokens", "4", "--repeats", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    import json

    data = json.loads(out.read_text())
    assert [r["context"] for r in data["results"]] == [8, 40] and data["mode"] == "decode"
    for r in data["results"]:
        assert r["prefill_ms"] > 0 and r["decode_ms_p90"] >= r["decode_ms_p50"] > 0 and r["tokens_per_second"] > 0
        assert r["repeats"] == 2 and r["new_tokens"] == 4
    result = CliRunner().invoke(cli, ["bench", str(llama_small_dir), "--decode", "--context", "250", "--new-tokens", "10"])
    assert result.exit_code == 2 and "exceeds the model's 256 positions" in result.output


def test_torch_and_onnx_decode_functions_agree_on_shapes():
    from mlpdeploy.model.kv_cache import with_kv_cache
    from mlpdeploy.runtime.measure import measure_decode, torch_decode

    bundle = with_kv_cache(load_model("llama-tiny"))
    stats = measure_decode(torch_decode(bundle.module.decoder, bundle.cache), 256, context=5, new_tokens=3, repeats=1)
    assert stats.context == 5 and stats.repeats == 1 and stats.decode_ms_p50 > 0
    with pytest.raises(MlpdeployError, match="at least 2 new tokens"):
        measure_decode(torch_decode(bundle.module.decoder, bundle.cache), 256, context=5, new_tokens=1)


def test_advance_past_the_prefilled_length_is_an_error(llama_small_dir):
    generator = CachedGenerator(Engine.load(llama_small_dir / "model.ort.onnx"))
    logits, state = generator.prefill([[5, 6, 7]], 2)
    logits = generator.advance(state, logits.argmax(-1))
    generator.advance(state, logits.argmax(-1))
    with pytest.raises(MlpdeployError, match="prefilled for 5 positions and has used them all"):
        generator.advance(state, logits.argmax(-1))


def test_genai_config_describes_the_build(llama_small_dir):
    import json

    config = json.loads((llama_small_dir / "genai_config.json").read_text())
    layout = Engine.load(llama_small_dir / "model.ort.onnx").cache
    decoder = config["model"]["decoder"]
    assert decoder["filename"] == "model.ort.onnx"
    assert (decoder["num_hidden_layers"], decoder["num_key_value_heads"], decoder["head_size"]) == (4, layout.kv_heads, layout.head_dim)
    assert (decoder["hidden_size"], decoder["num_attention_heads"], config["model"]["vocab_size"]) == (128, 4, 256)
    assert decoder["inputs"]["position_ids"] == "position_ids"
    assert config["search"]["past_present_share_buffer"] is True
    assert config["model"]["context_length"] == layout.max_positions


def test_onnxruntime_genai_drives_the_build_to_the_same_tokens(llama_small_dir):
    og = pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai (extra: dev) not installed")
    model = og.Model(og.Config(str(llama_small_dir)))
    for prompt in (list(b"def "), list(b"import numpy as np\n")):
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + 24, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(np.array(prompt, np.int32))
        theirs = []
        while not generator.is_done():
            generator.generate_next_token()
            theirs.append(int(generator.get_next_tokens()[0]))
        ours = CachedGenerator(Engine.load(llama_small_dir / "model.ort.onnx")).generate([prompt], 24).tokens[0]
        assert theirs == ours


def test_genai_config_refused_for_a_cache_with_gaps(llama_small_dir):
    import onnx_ir as ir

    from mlpdeploy.backends.onnxruntime.genai_config import genai_config
    from mlpdeploy.model.manifest import find_manifest
    from mlpdeploy.onnx_io import load_onnx

    manifest = find_manifest(llama_small_dir / "model.ort.onnx")
    manifest.cache = {**manifest.cache, "layers": [0, 2, 3]}  # as after dropping block 1's attention
    model = ir.from_proto(load_onnx(llama_small_dir / "model.ort.onnx", load_external_data=False))
    config, reason = genai_config(model, manifest, "model.ort.onnx", {})
    assert config is None and "cache layers [0, 2, 3] are not 0..2" in reason
