"""`--speculative heads` with heads trained by `analyze --draft-heads` and built in by `compile --plan`:
greedy output equals plain greedy token for token on the zoo llama and the 4-layer real SmolLM2,
and the heads' drafts are accepted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlpdeploy.analyze import AnalyzeOptions, analyze_model
from mlpdeploy.backends import get_backend
from mlpdeploy.compile import CompileOptions, compile_model
from mlpdeploy.model.tasks import DataOptions
from mlpdeploy.passes import PassSpec, rewrite_model
from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator
from mlpdeploy.runtime.ties import check_same_greedy

DATA = Path(__file__).resolve().parents[2] / "bench" / "data" / "mlpdeploy-notes.jsonl"
CODE = b"def area(width, height):\n    return width * height\n\n\ndef volume(width, height, depth):\n    return "
PROMPTS = [list(CODE), list(b"The cache is rewound on rejection. A verify step accepts "), list(b"x")]


def _same_as_plain(artifact: Path, prompts: list[list[int]], new_tokens: int, mode: str = "heads", stop=None):
    engine = Engine.load(artifact)
    plain = CachedGenerator(engine).generate(prompts, new_tokens, stop_tokens=stop or ())
    spec = CachedGenerator(engine, mode).generate(prompts, new_tokens, stop_tokens=stop or ())
    for row in range(len(prompts)):
        check_same_greedy(plain.tokens[row], spec.tokens[row], spec.near_ties[row], plain.near_ties[row])
    return plain, spec


def test_trained_heads_on_the_zoo_llama(tmp_path):
    plan = tmp_path / "plan" / "plan.json"
    plan.parent.mkdir()
    analyze_model("llama-small", AnalyzeOptions({"draft-heads": "3:prompts=24,eval=6,new=32,passage=48,epochs=20,lr=0.01,vocab=128"}, samples=8,
                                                data=DataOptions(path=DATA, seq_len=64))).save(plan)
    out = tmp_path / "out"
    report = compile_model("llama-small", out, CompileOptions(kv_cache=True, plan=plan, passes=[PassSpec("quantize-weights", {"format": "int4"})],
                                                              task_limit=8))
    assert report["passed"], report["validation"]["outputs"]
    assert {f"draft_logits.{j}" for j in range(3)} <= set(report["validation"]["outputs"])
    accepted = 0
    for prompt in PROMPTS:
        for mode in ("heads", "heads:k=1,adaptive=0"):
            plain, spec = _same_as_plain(out, [prompt], 40, mode)
            assert spec.tokens == plain.tokens, (mode, bytes(prompt))
            accepted += spec.speculative["accepted"]
    assert accepted > 0
    batch_plain, batch_spec = _same_as_plain(out, PROMPTS, 24)  # rows keep different numbers of drafts
    assert batch_spec.tokens == batch_plain.tokens


@pytest.fixture(scope="module")
def smollm2_heads(smollm2_small, smollm2_small_kv, tmp_path_factory) -> Path:
    """The 4-layer SmolLM2 with heads trained on its own chat answers, built in without a second export:
    draft-heads on the compile directory's exported graph, then the same ONNX Runtime build."""
    root = tmp_path_factory.mktemp("heads")
    plan = root / "plan.json"
    analyze_model(str(smollm2_small), AnalyzeOptions({"draft-heads": "2:prompts=8,eval=4,new=24,passage=48,epochs=8,lr=0.01,vocab=2048,batch=8"},
                                                     samples=8, data=DataOptions(path=DATA, seq_len=64))).save(plan)
    out = root / "smollm2-4l-heads"
    shutil.copytree(smollm2_small_kv, out)
    rewrite_model(out / "model.onnx", out / "model.opt.onnx", [PassSpec("draft-heads", {"artifact": str(plan.parent / "plan.draft-heads.safetensors")})])
    get_backend("onnxruntime").build(out / "model.opt.onnx", out / "model.ort.onnx")
    return out


def test_trained_heads_on_smollm2(smollm2_heads):
    from mlpdeploy.runtime.tokenizer import chat_messages, tokenizer_for

    engine = Engine.load(smollm2_heads)
    assert engine.manifest.draft_heads["heads"] == 2 and len(engine.manifest.draft_heads["token_ids"]) == 2048
    tokenizer = tokenizer_for(engine.manifest, smollm2_heads)
    prompts = [tokenizer.encode_chat(chat_messages(text)) for text in (
        "Summarize: the cache is rewound on rejection, and a verify step accepts the longest agreeing prefix.",
        "What is the capital of France?")]
    accepted = 0
    for prompt in prompts:
        plain, spec = _same_as_plain(smollm2_heads, [prompt], 32, stop=tokenizer.stop_token_ids)
        accepted += spec.speculative["accepted"]
    assert accepted > 0
