"""Speculative decoding: greedy output equals plain decoding's for every mode (up to recorded
near-ties), on the zoo llama and the truncated real SmolLM2; the near-tie recorder; the modes'
one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from mlpdeploy.compile import CompileOptions, compile_model
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator
from mlpdeploy.runtime.speculative import DraftLength, make_drafter, parse_mode, session_entries
from mlpdeploy.runtime.ties import NearTie, TieRecorder, check_same_greedy, top2_gap

from .speculative_fixtures import drop_plan, with_draft_heads

CODE = b"def area(width, height):\n    return width * height\n\n\ndef volume(width, height, depth):\n    return "
PROMPTS = [list(CODE), list(b"import os\nimport sys\nimport "), list(b"x")]


@pytest.fixture(scope="module")
def llama(tmp_path_factory, zoo_build):
    """llama-small compiled with --kv-cache (the model), opt-relu-small (a draft artifact: another architecture trained on
    the same bytes), a drop plan, and heads."""
    root = tmp_path_factory.mktemp("spec")
    small, draft = root / "llama-small", zoo_build("opt-relu-small", kv_cache=True)
    compile_model("llama-small", small, CompileOptions(kv_cache=True, task_limit=8))
    return {"model": small, "draft": draft, "plan": drop_plan(root / "plan.json", "llama-small", ["layers.2", "layers.3.self_attn"]),
            "heads": with_draft_heads(small, root / "llama-small-heads"), "root": root}


def _modes(artifacts: dict) -> list[str]:
    return ["ngram", "ngram:n=2,k=4,adaptive=0", f"self:{artifacts['plan']},k=3,adaptive=0", f"draft:{artifacts['draft']},adaptive=0", "heads", "heads:k=1"]


def _same_as_plain(model_dir, drafter, prompts, new_tokens: int, engine_dir=None):
    engine = Engine.load(engine_dir or model_dir)
    plain = CachedGenerator(engine).generate(prompts, new_tokens)
    spec = CachedGenerator(engine, drafter).generate(prompts, new_tokens)
    for row in range(len(prompts)):
        check_same_greedy(plain.tokens[row], spec.tokens[row], spec.near_ties[row], plain.near_ties[row])
    return plain, spec


def test_every_mode_is_plain_greedy_on_the_zoo_llama(llama, monkeypatch):
    monkeypatch.setenv("MLPDEPLOY_CACHE_DIR", str(llama["root"] / "cache"))
    accepted = {}
    for mode in _modes(llama):
        target = llama["heads"] if mode.startswith("heads") else llama["model"]
        drafter = make_drafter(mode, Engine.load(target))
        for prompt in PROMPTS:
            plain, spec = _same_as_plain(target, drafter, [prompt], 48)
            assert spec.tokens == plain.tokens, (mode, bytes(prompt))  # no near-tie flipped on this model
            assert spec.speculative["rounds"] == len(spec.step_seconds) and spec.finish == ["length"]
            accepted[mode] = accepted.get(mode, 0) + spec.speculative["accepted"]
    assert all(accepted.values()), accepted  # every mode's drafts were verified, and some accepted


def test_batches_of_different_lengths(llama):
    """Rows accept different numbers of drafts in the same step (holes in the shorter rows' masks)."""
    engine = Engine.load(llama["model"])
    prompts = [PROMPTS[0], list(b"for "), list(b"\n")]
    plain = CachedGenerator(engine).generate(prompts, 40)
    for mode in ("ngram:adaptive=0", f"draft:{llama['draft']},adaptive=0"):
        spec = CachedGenerator(engine, mode).generate(prompts, 40)
        assert spec.tokens == plain.tokens, mode
        assert spec.tokens == [CachedGenerator(engine, mode).generate([p], 40).tokens[0] for p in prompts]


def test_stop_tokens_and_streaming(llama):
    engine = Engine.load(llama["model"])
    full = CachedGenerator(engine).generate([PROMPTS[0]], 40).tokens[0]
    stop = full[12]
    seen = []
    result = CachedGenerator(engine, "ngram:adaptive=0").generate([PROMPTS[0]], 40, stop_tokens=[stop], on_token=lambda r, t: seen.append(t))
    first = full.index(stop)
    assert result.tokens[0] == full[: first + 1] == seen and result.finish == ["stop"]


def _smollm2_prompts(engine, directory) -> list[list[int]]:
    from mlpdeploy.runtime.tokenizer import chat_messages, tokenizer_for

    tokenizer = tokenizer_for(engine.manifest, directory)
    return [tokenizer.encode_chat(chat_messages(text)) for text in (
        "Repeat exactly: the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the lazy dog.",
        "What is the capital of France?")]


def test_ngram_and_heads_are_plain_greedy_on_smollm2(smollm2_small_kv, tmp_path):
    """The truncated real model: chat prompts, one whose answer copies from the prompt; heads over a vocabulary slice."""
    engine = Engine.load(smollm2_small_kv)
    prompts = _smollm2_prompts(engine, smollm2_small_kv)
    for prompt in prompts:
        _, spec = _same_as_plain(smollm2_small_kv, make_drafter("ngram", engine), [prompt], 24)
    heads = with_draft_heads(smollm2_small_kv, tmp_path / "heads", slice_ids=np.arange(0, 49152, 3))
    heads_engine = Engine.load(heads)
    for prompt in prompts:
        _same_as_plain(heads, make_drafter("heads", heads_engine), [prompt], 24)


@pytest.mark.slow
def test_model_drafters_are_plain_greedy_on_smollm2(smollm2_small_kv, tmp_path, monkeypatch):
    """self:PLAN (a block dropped) and draft:ARTIFACT (that drafter's build, used as an artifact) on the real model."""
    monkeypatch.setenv("MLPDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    engine = Engine.load(smollm2_small_kv)
    plan = drop_plan(tmp_path / "plan.json", engine.manifest.source, ["model.model.layers.3"])
    self_drafter = make_drafter(f"self:{plan},adaptive=0", engine)
    draft = make_drafter(f"draft:{self_drafter.stepper.engine.path},adaptive=0", engine)
    for drafter in (self_drafter, draft):
        for prompt in _smollm2_prompts(engine, smollm2_small_kv):
            _, spec = _same_as_plain(smollm2_small_kv, drafter, [prompt], 24)
            assert spec.speculative["accepted"] > 0


def test_a_drafter_models_session_and_the_models_stop_spinning_between_runs(llama, monkeypatch):
    """self: and draft: step two sessions in turn: both are made with session.force_spinning_stop (each
    one's threads spinning after its run slowed the other's SmolLM2 steps twofold); ngram and heads
    leave the model's session as built."""
    monkeypatch.setenv("MLPDEPLOY_CACHE_DIR", str(llama["root"] / "cache"))

    def stops(engine) -> str:
        return engine.session.get_session_options().get_session_config_entry("session.force_spinning_stop")

    for mode in (f"self:{llama['plan']}", f"draft:{llama['draft']}"):
        engine = Engine.load(llama["model"], session_entries=session_entries(parse_mode(mode)))
        assert stops(engine) == "1" and stops(make_drafter(mode, engine).stepper.engine) == "1", mode
    assert session_entries(parse_mode("ngram")) is None and session_entries(parse_mode("heads")) is None and session_entries(None) is None


def test_near_tie_recorder():
    logits = np.array([[0.0, 3.0, 2.995, -1.0], [5.0, 1.0, 0.0, 0.0]], np.float32)
    recorder = TieRecorder(2, margin=0.01)
    for row in range(2):
        recorder.record(row, 7, logits[row])
    assert recorder.ties[0] == [NearTie(7, pytest.approx(0.005, abs=1e-6))] and recorder.ties[1] == []
    assert top2_gap(logits[1]) == 4.0 and logits[1, 0] == 5.0  # the row is left as it was
    # a difference at a recorded near-tie is allowed, anywhere else it is a bug
    plain, other = [1, 2, 3, 4], [1, 2, 9, 9]
    assert check_same_greedy(plain, other, [NearTie(2, 0.001)]) == 2
    assert check_same_greedy(plain, other, [], plain_ties=[NearTie(2, 0.001)]) == 2
    with pytest.raises(MlpdeployError, match="departs from plain decoding at token 2 .* no near-tie recorded"):
        check_same_greedy(plain, other, [NearTie(1, 0.001)])
    assert check_same_greedy(plain, plain, []) is None and check_same_greedy(plain, plain[:2], []) is None


def test_generation_records_near_ties(llama):
    """A margin above every gap records every token, with the gap its logits had."""
    engine = Engine.load(llama["model"])
    result = CachedGenerator(engine, "ngram", tie_margin=1e9).generate([PROMPTS[1]], 12)
    assert [t.index for t in result.near_ties[0]] == list(range(12))
    logits, state = CachedGenerator(engine).prefill([PROMPTS[1]], 4)
    assert result.near_ties[0][0].gap == pytest.approx(top2_gap(logits[0]), abs=1e-5)
    assert CachedGenerator(engine, "ngram", tie_margin=0).generate([PROMPTS[1]], 12).near_ties == [[]]


def test_draft_length_policy():
    policy = DraftLength(8)
    assert policy.choose(np.array([0.95, 1.0])) >= 6 and policy.choose(np.array([0.1, 1.0])) == 0
    estimate = policy.start(1)[0]
    for _ in range(6):
        policy.update(estimate, 8, 8)
    assert policy.choose(estimate) == 8
    for _ in range(6):
        policy.update(estimate, 4, 0)
    assert policy.choose(estimate) == 0
    for _ in range(20):  # no drafts: back to the prior, which tries again
        policy.update(estimate, 0, 0)
    assert policy.choose(estimate) >= 1
    assert DraftLength(5, fixed=True).choose(np.array([0.0, 1.0])) == 5


@pytest.mark.parametrize("text, message", [
    ("beam", "unknown --speculative mode 'beam'; choose ngram"),
    ("ngram:q=2", "unknown option 'q'; ngram takes n=, k=, min=, adaptive="),
    ("ngram:k=x", "k='x' must be a number"),
    ("ngram:k=0", "k=0 is out of range (1 to 64)"),
    ("ngram:n=2,min=3", "min=3 is larger than n=2"),
    ("ngram:plan.json", "'plan.json' is not an option"),
    ("self", "self needs a drop-layers plan"),
    ("draft:", "draft needs a draft artifact"),
])
def test_bad_modes(text, message):
    with pytest.raises(MlpdeployError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        parse_mode(text)


def test_mismatched_drafts(llama, smollm2_small_kv, zoo_build, tmp_path):
    engine = Engine.load(llama["model"])
    plain = zoo_build("llama-tiny")
    with pytest.raises(MlpdeployError, match="the draft artifact has no KV cache; compile the draft model with --kv-cache"):
        make_drafter(f"draft:{plain}", engine)
    with pytest.raises(MlpdeployError, match="the draft model scores 49152 tokens, the model 256; a drafter needs the same vocabulary"):
        make_drafter(f"draft:{smollm2_small_kv}", engine)
    with pytest.raises(MlpdeployError, match="does not exist"):
        make_drafter(f"draft:{tmp_path / 'nothing'}", engine)
    with pytest.raises(MlpdeployError, match="has no draft heads"):
        make_drafter("heads", engine)
    with pytest.raises(MlpdeployError, match="the artifact has 2 draft heads; choose k from 1 to 2"):
        make_drafter("heads:k=3", Engine.load(llama["heads"]))


def test_draft_with_another_tokenizer(smollm2_small_kv, tmp_path):
    """Same vocabulary size, other tokens: refused."""
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(smollm2_small_kv, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[100:102]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(MlpdeployError, match="its tokenizer's vocabulary differs from the model's"):
        make_drafter(f"draft:{other}", Engine.load(smollm2_small_kv))


def test_self_plan_errors(llama, tmp_path, monkeypatch):
    monkeypatch.setenv("MLPDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    engine = Engine.load(llama["model"])
    empty = tmp_path / "empty.json"
    empty.write_text('{"mlpdeploy_plan": 1, "model": "llama-small", "created_with": {}, "calibration": {}, "passes": []}')
    with pytest.raises(MlpdeployError, match="the plan drops no layers"):
        make_drafter(f"self:{empty}", engine)
    with pytest.raises(MlpdeployError, match="was made for model 'llama-tiny', not 'llama-small'"):
        make_drafter(f"self:{drop_plan(tmp_path / 'tiny.json', 'llama-tiny', ['layers.1'])}", engine)
    with pytest.raises(MlpdeployError, match="is not in a `mlpdeploy compile` output directory"):
        import shutil

        alone = tmp_path / "alone"
        alone.mkdir()
        for f in llama["model"].glob("model.ort.*"):
            shutil.copy(f, alone / f.name)
        make_drafter(f"self:{llama['plan']}", Engine.load(alone / "model.ort.onnx"))
    assert not list((tmp_path / "cache").glob("drafters/*")) if (tmp_path / "cache").exists() else True
