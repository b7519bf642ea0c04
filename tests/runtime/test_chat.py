"""`generate` on an instruct model: the tokenizer's chat template, stop ids, and the speed summary."""

from __future__ import annotations

import shutil

import pytest
import torch
from click.testing import CliRunner

from mlpdeploy.cli import cli
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator, Generation
from mlpdeploy.runtime.tokenizer import ByteTokenizer, chat_messages, check_messages, tokenizer_for

transformers = pytest.importorskip("transformers", reason="needs the hf extra")

QUESTION = "What does the assert statement do in Python?"


def _hf_chat_ids(directory, messages) -> list[int]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    return tokenizer(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), add_special_tokens=False)["input_ids"]


def _torch_greedy(directory, ids: list[int], n: int) -> list[int]:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory)).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_chat_template_is_applied_like_transformers(smollm2_small, smollm2_small_kv):
    tokenizer = tokenizer_for(Engine.load(smollm2_small_kv).manifest, smollm2_small_kv)
    assert tokenizer.has_chat_template and 2 in tokenizer.stop_token_ids  # <|im_end|>
    for system in (None, "Answer in one sentence."):
        messages = chat_messages(QUESTION, system)
        assert tokenizer.encode_chat(messages) == _hf_chat_ids(smollm2_small, messages)


def test_greedy_chat_answer_equals_torch(smollm2_small, smollm2_small_kv):
    ids = _hf_chat_ids(smollm2_small, chat_messages(QUESTION))
    result = CachedGenerator(Engine.load(smollm2_small_kv)).generate([ids], 12)
    assert result.tokens[0] == _torch_greedy(smollm2_small, ids, 12)


def test_cli_uses_the_chat_template_by_default(smollm2_small, smollm2_small_kv):
    chat = CliRunner().invoke(cli, ["generate", str(smollm2_small_kv), "--prompt", QUESTION, "--max-new-tokens", "4"])
    assert chat.exit_code == 0, chat.output
    prefill = f"prefill {len(_hf_chat_ids(smollm2_small, chat_messages(QUESTION)))} tokens"
    assert prefill in chat.output
    plain = CliRunner().invoke(cli, ["generate", str(smollm2_small_kv), "--prompt", QUESTION, "--no-chat", "--max-new-tokens", "4"])
    assert plain.exit_code == 0 and prefill not in plain.output


def test_one_token_reports_no_decode_speed(smollm2_small_kv):
    result = CliRunner().invoke(cli, ["generate", str(smollm2_small_kv), "--prompt", "Hi", "--max-new-tokens", "1"])
    assert result.exit_code == 0, result.output
    assert "1 tokens (length)" in result.output and "no decode step" in result.output and "nan" not in result.output
    assert Generation([[5]], ["length"], 0.1, [], 0.2).overall_tokens_per_second == pytest.approx(5.0)
    assert Generation([[5]], ["length"], 0.1).tokens_per_second is None


def test_the_artifact_carries_its_tokenizer(smollm2_small_kv, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(smollm2_small_kv, moved)
    engine = Engine.load(moved)
    engine.manifest.source = str(tmp_path / "gone")  # the source directory is not on this machine
    assert tokenizer_for(engine.manifest, moved).has_chat_template


@pytest.mark.parametrize("args, message", [
    (["--prompt", "Hi", "--no-chat", "--system", "Be brief."], "--system needs the chat template"),
    (["--prompt-ids", "1,2", "--chat"], "--chat and --system format text"),
])
def test_chat_option_errors(smollm2_small_kv, args, message):
    result = CliRunner().invoke(cli, ["generate", str(smollm2_small_kv), *args])
    assert result.exit_code == 2 and message in result.output


def test_chat_on_a_model_without_a_template(zoo_build):
    result = CliRunner().invoke(cli, ["generate", str(zoo_build("llama-tiny", kv_cache=True)), "--prompt", "def ", "--chat"])
    assert result.exit_code == 2 and "has no chat template" in result.output
    assert not ByteTokenizer.has_chat_template


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty list"),
    ("hi", "non-empty list"),
    ([{"role": "user"}], "message 0 must be an object"),
    ([{"role": "user", "content": 3}], "message 0 must be an object"),
])
def test_bad_messages(messages, message):
    with pytest.raises(MlpdeployError, match=message):
        check_messages(messages)
