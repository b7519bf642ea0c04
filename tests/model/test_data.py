"""mlpdeploy.data: deterministic corpora and splits, batching, metrics, and user calibration files."""

from __future__ import annotations

import platform

import numpy as np
import pytest

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model import data
from mlpdeploy.model.calibration import FileData, calibration_batches, load_calibration_file
from mlpdeploy.model.data import DigitsTask, LMTask
from mlpdeploy.zoo import ZOO

# ---------------------------------------------------------------- byte corpus


def test_corpus_file_lists_are_pinned_sorted_and_disjoint():
    assert list(data.TRAIN_FILES) == sorted(data.TRAIN_FILES) and list(data.EVAL_FILES) == sorted(data.EVAL_FILES)
    assert not set(data.TRAIN_FILES) & set(data.EVAL_FILES)
    train, evaluation = data.stdlib_corpus()
    assert len(train) > 1_000_000 and len(evaluation) > 50_000
    info = data.corpus_info()
    assert info["train_bytes"] == len(train) and len(info["sha256"]) == 64
    if platform.python_version() == "3.11.7":
        assert info["pinned"], "the corpus on CPython 3.11.7 must be the pinned one"


def test_lm_calibration_is_deterministic_and_from_the_train_split():
    task = LMTask(seq_len=64)
    a = list(task.calibration_batches(3, 4, seed=1))
    b = list(task.calibration_batches(3, 4, seed=1))
    c = list(task.calibration_batches(3, 4, seed=2))
    assert len(a) == 3 and all(set(x) == {"input_ids"} for x in a)
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert not np.array_equal(a[0]["input_ids"], c[0]["input_ids"])
    ids = a[0]["input_ids"]
    assert ids.shape == (4, 64) and ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 256
    train, _ = data.stdlib_corpus()
    assert all(bytes(row.astype(np.uint8)) in train for row in ids)


def test_lm_eval_batches_cover_the_eval_split_with_next_byte_targets():
    task = LMTask(seq_len=128)
    batches = list(task.eval_batches(16))
    assert all(set(b) == {"input_ids", "targets"} for b in batches)
    inputs = np.concatenate([b["input_ids"] for b in batches])
    targets = np.concatenate([b["targets"] for b in batches])
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    np.testing.assert_array_equal(inputs[1:, 0], targets[:-1, -1])  # windows are consecutive
    _, evaluation = data.stdlib_corpus()
    assert bytes(inputs.reshape(-1).astype(np.uint8)) == evaluation[: inputs.size]
    assert len(inputs) == (len(evaluation) - 1) // 128
    assert [len(b["input_ids"]) for b in task.eval_batches(16, limit=20)] == [16, 4]


def test_perplexity_of_known_distributions():
    task = LMTask(seq_len=128)
    uniform = task.evaluate(lambda feed: np.zeros(feed["input_ids"].shape + (256,), np.float32), limit=40)
    assert uniform["metric"] == "perplexity" and uniform["value"] == pytest.approx(256.0, rel=1e-9)
    assert uniform["predictions"].shape == (40, 128) and uniform["samples"] == 40

    train, _ = data.stdlib_corpus()
    counts = np.bincount(np.frombuffer(train, np.uint8), minlength=256) + 1.0
    log_p = np.log(counts / counts.sum()).astype(np.float32)
    unigram = task.evaluate(lambda feed: np.broadcast_to(log_p, feed["input_ids"].shape + (256,)))
    assert unigram["value"] == pytest.approx(task.unigram_perplexity(), rel=1e-4)
    assert 5 < unigram["value"] < 60
    assert (unigram["predictions"] == np.argmax(log_p)).all()

    # a bigram model counted on train beats the unigram baseline on eval: the metric rewards context
    pairs = np.frombuffer(train, np.uint8).astype(np.int64)
    bigram = np.log(np.bincount(pairs[:-1] * 256 + pairs[1:], minlength=65536).reshape(256, 256) + 0.1)
    better = task.evaluate(lambda feed: bigram[feed["input_ids"]])
    assert better["value"] < 0.6 * unigram["value"]


def test_evaluate_rejects_wrong_logit_shapes():
    with pytest.raises(MlpdeployError, match=r"logits of shape \[2, 10\]"):
        LMTask(seq_len=16).evaluate(lambda feed: np.zeros((2, 10)), batch_size=2, limit=2)


# ---------------------------------------------------------------- digits


def test_digits_split_is_fixed_and_disjoint():
    train_x, train_y = data.digits_split("train")
    eval_x, eval_y = data.digits_split("eval")
    assert (len(train_y), len(eval_y)) == (1438, 359)
    assert train_x.shape[1:] == (1, 8, 8) and train_x.min() == -1.0 and train_x.max() == 1.0
    rows = {x.tobytes() for x in train_x}
    # the split is by sample index; a few digits are pixel-identical duplicates, but not many
    assert sum(x.tobytes() in rows for x in eval_x) < 5
    all_x, _ = data._digits()
    np.testing.assert_array_equal(eval_x, all_x[4::5])


def test_digits_resize_is_nearest_upsampling():
    small = DigitsTask()
    big = DigitsTask(image_size=32, channels=3)
    x8, y8 = small.split("eval")
    x32, y32 = big.split("eval")
    assert x32.shape == (359, 3, 32, 32) and x32.dtype == np.float32
    np.testing.assert_array_equal(y8, y32)
    np.testing.assert_array_equal(x32[:, 2, ::4, ::4], x8[:, 0])
    np.testing.assert_array_equal(x32[:, 0, 3::4, 1::4], x8[:, 0])
    with pytest.raises(MlpdeployError, match="multiple of 8"):
        DigitsTask(image_size=12)


def test_digits_calibration_deterministic_and_accuracy_of_a_centroid_classifier():
    task = DigitsTask()
    a, b = (list(task.calibration_batches(2, 5, seed=3)) for _ in range(2))
    assert all(np.array_equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(a, b))
    assert a[0]["pixel_values"].shape == (5, 1, 8, 8) and set(a[0]) == {"pixel_values"}

    train_x, train_y = data.digits_split("train")
    centroids = np.stack([train_x[train_y == k].reshape(-1, 64).mean(0) for k in range(10)])

    def nearest_centroid(feed):
        x = feed["pixel_values"].reshape(len(feed["pixel_values"]), 64)
        return -((x[:, None] - centroids[None]) ** 2).sum(-1)

    result = task.evaluate(nearest_centroid, batch_size=50)
    assert result["metric"] == "accuracy" and 0.85 < result["value"] < 1.0
    assert result["predictions"].shape == (359,)
    constant = task.evaluate(lambda feed: np.tile(np.eye(10)[3], (len(feed["pixel_values"]), 1)))
    assert constant["value"] == pytest.approx((data.digits_split("eval")[1] == 3).mean())


# ---------------------------------------------------------------- user files


def _llama_specs():
    bundle = ZOO["llama-tiny"].build()
    return bundle, bundle.inputs, {"batch": [1, 4096], "seq": list(bundle.dim_range("seq"))}


def test_npz_and_polygraphy_json_load_to_the_same_feeds(tmp_path):
    from polygraphy.json import save_json

    _, specs, dims = _llama_specs()
    ids = np.arange(24, dtype=np.int32).reshape(3, 8)
    np.savez(tmp_path / "calib.npz", input_ids=ids)
    save_json([{"input_ids": ids}, {"input_ids": ids[:2] + 1}], str(tmp_path / "calib.json"))
    (npz,) = load_calibration_file(tmp_path / "calib.npz", specs, dims)
    feeds = load_calibration_file(tmp_path / "calib.json", specs, dims)
    assert npz["input_ids"].dtype == np.int64  # cast to the model's dtype
    np.testing.assert_array_equal(npz["input_ids"], feeds[0]["input_ids"])
    assert len(feeds) == 2 and feeds[1]["input_ids"].shape == (2, 8)


def test_file_data_rebatches_pooled_samples_deterministically(tmp_path):
    from polygraphy.json import save_json

    save_json([{"input_ids": np.full((3, 8), i)} for i in range(2)], str(tmp_path / "c.json"))
    source = FileData.load(tmp_path / "c.json")
    batches = list(source.calibration_batches(10, 2, seed=0))
    assert [len(b["input_ids"]) for b in batches] == [2, 2, 2]
    assert sorted(np.concatenate([b["input_ids"][:, 0] for b in batches]).tolist()) == [0, 0, 0, 1, 1, 1]
    again = list(source.calibration_batches(10, 2, seed=0))
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(batches, again))

    save_json([{"input_ids": np.zeros((1, 5))}, {"input_ids": np.zeros((1, 7))}], str(tmp_path / "ragged.json"))
    ragged = list(FileData.load(tmp_path / "ragged.json").calibration_batches(10, 4))
    assert [b["input_ids"].shape for b in ragged] == [(1, 5), (1, 7)]  # kept as stored


@pytest.mark.parametrize("case,match", [
    ("missing", r"missing\.npz not found"),
    ("garbage", r"cannot read inputs from .*garbage\.npz"),
    ("empty", r"empty\.npz: feed 0 holds no arrays"),
    ("strings", r"strings\.npz: inputs \['input_ids'\] are not numeric"),
    ("wrong_name", r"wrong_name\.npz: inputs \['tokens'\] do not match the model's inputs \['input_ids'\]"),
    ("wrong_rank", r"wrong_rank\.npz: input input_ids has shape \[8\]"),
    ("not_json", r"cannot read inputs from .*not_json\.json"),
])
def test_bad_calibration_files_give_one_line_errors(tmp_path, case, match):
    _, specs, dims = _llama_specs()
    path = tmp_path / (f"{case}.json" if case == "not_json" else f"{case}.npz")
    if case == "garbage":
        path.write_bytes(b"this is not a zip archive")
    elif case == "empty":
        np.savez(path)
    elif case == "strings":
        np.savez(path, input_ids=np.array(["a", "b"]))
    elif case == "wrong_name":
        np.savez(path, tokens=np.zeros((2, 8), np.int64))
    elif case == "wrong_rank":
        np.savez(path, input_ids=np.zeros(8, np.int64))
    elif case == "not_json":
        path.write_text("{not json")
    with pytest.raises(MlpdeployError, match=match) as info:
        load_calibration_file(path, specs, dims)
    assert "\n" not in str(info.value)


def test_calibration_batches_dispatch(tmp_path):
    bundle, _, _ = _llama_specs()
    from_task = calibration_batches(bundle, n=2, batch_size=3, seed=5)
    expected = list(bundle.task.calibration_batches(2, 3, seed=5))
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(from_task, expected))

    np.savez(tmp_path / "c.npz", input_ids=np.ones((4, 8), np.int64))
    from_file = calibration_batches(bundle, n=5, batch_size=3, path=tmp_path / "c.npz")
    assert [b["input_ids"].shape for b in from_file] == [(3, 8), (1, 8)]

    bundle.task = None
    generated = calibration_batches(bundle, n=2, batch_size=3, seed=0)
    assert len(generated) == 2 and generated[0]["input_ids"].shape == (3, 8)
    assert not np.array_equal(generated[0]["input_ids"], generated[1]["input_ids"])
