"""--data text: documents, deterministic disjoint splits, the model's own tokenizer, and perplexity
that equals a plain transformers computation on the same windows."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.documents import chunk_document, read_text_data, split_documents
from mlpdeploy.model.tasks import DataOptions, attach_task, resolve_task
from mlpdeploy.model.torch_run import first_output_fn

NOTES = [json.loads(line)["text"] for line in open("bench/data/mlpdeploy-notes.jsonl", encoding="utf-8")]


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t, "source": f"doc {i}"}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


# ---------------------------------------------------------------- documents and splits

documents = st.lists(st.text(min_size=1, max_size=40).filter(str.strip), min_size=2, max_size=40, unique=True)


@given(documents, st.randoms())
@settings(max_examples=200, deadline=None)
def test_split_is_deterministic_disjoint_and_independent_of_order(docs, rnd):
    calibration, held_out = split_documents(docs)
    assert (calibration, held_out) == split_documents(docs)
    assert not set(calibration) & set(held_out) and sorted(calibration + held_out) == list(range(len(docs)))
    assert held_out and calibration and len(held_out) == max(1, len(docs) // 5)
    shuffled = list(docs)
    rnd.shuffle(shuffled)
    _, held_shuffled = split_documents(shuffled)
    assert {shuffled[i] for i in held_shuffled} == {docs[i] for i in held_out}


@given(st.lists(st.sampled_from(["a\n", "\n", "word " * 30 + "\n", "x" * 500, "\n\n"]), max_size=80))
def test_chunks_join_back_to_the_document(lines):
    text = "".join(lines)
    chunks = chunk_document(text, chars=300)
    assert "".join(chunks) == text
    longest = max((len(line) for line in text.splitlines(keepends=True)), default=0)
    assert all(len(c) < 2 * 300 + longest for c in chunks)  # cut at line ends only


def test_reading_files_folders_and_jsonl(tmp_path):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for i, text in enumerate(NOTES[:6]):
        (folder / ("sub" if i % 2 else "") / f"note{i}.md").write_text(text, encoding="utf-8")
    (folder / "sub" / "copy.txt").write_text(NOTES[0], encoding="utf-8")  # a duplicate is kept once
    (folder / ".hidden.txt").write_text("never read", encoding="utf-8")
    (folder / "image.bin").write_bytes(b"\0\1")  # not a text suffix: ignored
    data = read_text_data(folder)
    assert len(data.documents) == 6 and not data.chunked and set(data.documents) == set(NOTES[:6])
    assert read_text_data(folder).sha256 == data.sha256
    (folder / "note0.md").write_text(NOTES[0] + "!", encoding="utf-8")
    assert read_text_data(folder).sha256 != data.sha256

    single = tmp_path / "one.txt"
    single.write_text("\n\n".join(NOTES[:3]), encoding="utf-8")
    chunked = read_text_data(single)
    assert chunked.chunked and len(chunked.documents) >= 5 and "".join(chunked.documents) == single.read_text(encoding="utf-8")

    jsonl = write_jsonl(tmp_path / "d.jsonl", NOTES[:7] + [""])
    assert read_text_data(jsonl).documents == tuple(NOTES[:7])


# ---------------------------------------------------------------- a real causal LM


@pytest.fixture(scope="module")
def smol(smollm2_small):
    from mlpdeploy.model import load_model

    return load_model(str(smollm2_small))


@pytest.fixture(scope="module")
def notes_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "notes.jsonl", [t[:1500] for t in NOTES[:10]])


def test_windows_are_the_tokenizers_ids_of_each_split(smol, smollm2_small, notes_file):
    transformers = pytest.importorskip("transformers")
    task = resolve_task(smol, DataOptions(path=notes_file, seq_len=32))
    tok = transformers.AutoTokenizer.from_pretrained(str(smollm2_small))
    docs = read_text_data(notes_file).documents
    calibration, held_out = split_documents(docs)
    expected = [t for i in held_out for t in tok(docs[i])["input_ids"] + [tok.eos_token_id]]
    np.testing.assert_array_equal(task.eval_tokens, expected)
    inputs, targets = task.eval_arrays()
    assert inputs.shape[1] == 32 and len(inputs) == (len(expected) - 1) // 32
    np.testing.assert_array_equal(inputs.reshape(-1), expected[:inputs.size])
    np.testing.assert_array_equal(targets.reshape(-1), expected[1:inputs.size + 1])
    # calibration windows come from the other documents only, and are the same for the same seed
    held_text = "".join(docs[i] for i in held_out)
    for batch in task.labeled_calibration_batches(2, 3, seed=5):
        for row in batch["input_ids"]:
            assert tok.decode(row[4:12]) not in held_text
    a, b = (list(task.calibration_batches(2, 3, seed=5)) for _ in range(2))
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert task.calibration_source().startswith(f"data:{notes_file}, sha256:")
    assert task.describe()["documents"] == {"calibration": len(calibration), "held_out": len(held_out)}


def test_perplexity_equals_plain_transformers(smol, smollm2_small, notes_file):
    transformers = pytest.importorskip("transformers")
    import torch

    task = resolve_task(smol, DataOptions(path=notes_file, seq_len=32))
    ours = task.evaluate(first_output_fn(smol.module, ["input_ids"]), batch_size=3, limit=5)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(smollm2_small), dtype=torch.float32).eval()
    inputs, targets = task.eval_arrays()
    windows = torch.from_numpy(np.concatenate([inputs[:5], targets[:5, -1:]], axis=1))
    with torch.no_grad():
        loss = model(input_ids=windows, labels=windows).loss  # shifts internally: mean NLL of every next token
    assert ours["metric"] == "perplexity" and ours["samples"] == 5
    assert ours["value"] == pytest.approx(float(torch.exp(loss)), rel=1e-4)


def test_attach_task_makes_the_data_the_models_task(smol, notes_file):
    assert attach_task(smol, None) is smol and attach_task(smol, DataOptions()) is smol
    judged = attach_task(smol, DataOptions(path=notes_file, seq_len=32))
    assert judged.task.metric == "perplexity" and judged.module is smol.module and smol.task is None
    with pytest.raises(MlpdeployError, match="--seq-len 100000 is outside"):
        resolve_task(smol, DataOptions(path=notes_file, seq_len=100_000))


@given(documents)
@settings(max_examples=100, deadline=None)
def test_tokenized_splits_are_deterministic_and_hold_only_their_documents(docs):
    from pathlib import Path

    from mlpdeploy.model.documents import TextData
    from mlpdeploy.model.text_tasks import text_lm_task
    from mlpdeploy.model.tokenize import byte_tokenizer

    data = TextData(Path("docs.jsonl"), tuple(docs), (), "0" * 64, chunked=False)
    calibration, held_out = split_documents(docs)
    build = lambda: text_lm_task(data, byte_tokenizer(), seq_len=2, source="data:docs.jsonl")  # noqa: E731
    try:
        task = build()
    except MlpdeployError as exc:  # too little text in a split for one window: said so, never a partial task
        assert "too few for one window" in str(exc)
        return
    again = build()
    np.testing.assert_array_equal(task.eval_tokens, again.eval_tokens)
    np.testing.assert_array_equal(task.calibration_tokens, again.calibration_tokens)
    assert bytes(task.eval_tokens.astype(np.uint8)) == "".join(docs[i] for i in held_out).encode()
    assert bytes(task.calibration_tokens.astype(np.uint8)) == "".join(docs[i] for i in calibration).encode()


def test_real_tokenizer_is_deterministic(smollm2_small):
    from mlpdeploy.model.tokenize import hf_tokenizer

    a, b = hf_tokenizer(smollm2_small), hf_tokenizer(smollm2_small)
    for text in NOTES[:5]:
        assert a.document(text) == b.document(text) and a.document(text)[-1] == a.eos and a.prefix == a.suffix == []
