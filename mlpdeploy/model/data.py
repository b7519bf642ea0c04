"""Offline, deterministic data: the zoo's evaluation tasks and calibration batches.

Two tasks, both built from files already on every machine (no download):

* **stdlib-bytes** (language modelling, metric perplexity): the bytes of a pinned, sorted list
  of Python standard-library source files, read from the local installation
  (`sysconfig.get_paths()['stdlib']`). Token = byte (vocab 256). Fixed split by file:
  `EVAL_FILES` are held out, `TRAIN_FILES` are trained on. Eval windows are consecutive,
  `seq_len + 1` bytes long, stepping by `seq_len`; `targets` are the next bytes.
  `corpus_info()` reports the corpus' SHA-256; it equals `CORPUS_SHA256` on CPython 3.11.7
  (other patch releases may differ by a few edited lines, and metrics by a hair).
* **digits** (classification, metric accuracy): scikit-learn's bundled 8×8 `digits` (1,797
  images; needs scikit-learn, extra `train`). Fixed split: sample i is eval when i % 5 == 4
  (359 eval, 1,438 train). Pixels are scaled from 0..16 to [-1, 1]; a task for a larger or
  RGB model upsamples by nearest neighbour (8 → image_size, a multiple of 8) and repeats
  the channel.

A `Task` gives `calibration_batches(n, batch_size, seed)` (inputs only, from the train
split), `eval_batches(batch_size)` (inputs plus `targets`/`labels`, the eval split, in order)
and `evaluate(run_fn)`. Calibration data for any model (a user's file, the task, or
generated inputs) comes from `mlpdeploy.model.calibration`.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mlpdeploy.errors import MlpdeployError, require

Batch = dict[str, np.ndarray]
RunFn = Callable[[Batch], np.ndarray]

# Sorted; every file exists as a single module in CPython 3.11 (and 3.12/3.13).
TRAIN_FILES: tuple[str, ...] = (
    "argparse.py", "ast.py", "bisect.py", "calendar.py", "collections/__init__.py", "colorsys.py",
    "configparser.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "difflib.py", "enum.py",
    "fnmatch.py", "functools.py", "getopt.py", "gettext.py", "glob.py", "heapq.py", "inspect.py",
    "ipaddress.py", "json/__init__.py", "json/decoder.py", "json/encoder.py", "linecache.py", "locale.py",
    "logging/__init__.py", "numbers.py", "operator.py", "optparse.py", "pprint.py", "queue.py", "random.py",
    "reprlib.py", "sched.py", "secrets.py", "selectors.py", "shutil.py", "statistics.py", "string.py",
    "subprocess.py", "tempfile.py", "threading.py", "tokenize.py", "traceback.py", "typing.py", "uuid.py",
    "weakref.py",
)
EVAL_FILES: tuple[str, ...] = ("fractions.py", "graphlib.py", "shlex.py", "textwrap.py")
CORPUS_SHA256 = "df17bc66985e94fe96116bc66857e96caca89bffe5cf4a387b257e9405da6fc4"  # CPython 3.11.7
DIGITS_EVAL_EVERY = 5
SCORE_ROWS = 1024  # positions scored at once (bounds the float64 copy of a large vocabulary's logits)


# ---------------------------------------------------------------- corpora


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=None)
def stdlib_corpus() -> tuple[bytes, bytes]:
    """(train bytes, eval bytes): the pinned stdlib files of each split, concatenated in order."""
    root = stdlib_dir()

    def read(names: tuple[str, ...]) -> bytes:
        parts = []
        for name in names:
            path = root / name
            if not path.is_file():
                raise MlpdeployError(
                    f"corpus file {path} is missing; the stdlib-bytes task reads CPython's own sources "
                    "(a Python 3.11+ installation with its standard library .py files)"
                )
            parts.append(path.read_bytes())
        return b"".join(parts)

    return read(TRAIN_FILES), read(EVAL_FILES)


def corpus_info() -> dict:
    """Sizes and SHA-256 of the byte corpus here, and whether it is the pinned one."""
    train, evaluation = stdlib_corpus()
    digest = hashlib.sha256(train + evaluation).hexdigest()
    return {"stdlib": str(stdlib_dir()), "train_bytes": len(train), "eval_bytes": len(evaluation),
            "sha256": digest, "pinned": digest == CORPUS_SHA256}


@functools.lru_cache(maxsize=None)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    datasets = require("sklearn.datasets", "train", "the digits task")
    data = datasets.load_digits()
    images = (data.images.astype(np.float32) / 16.0) * 2.0 - 1.0
    return images[:, None], data.target.astype(np.int64)


def digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [N, 1, 8, 8] in [-1, 1], labels [N]) of the fixed `train` or `eval` split."""
    images, labels = _digits()
    is_eval = np.arange(len(labels)) % DIGITS_EVAL_EVERY == DIGITS_EVAL_EVERY - 1
    mask = is_eval if split == "eval" else ~is_eval
    return images[mask], labels[mask]


# ---------------------------------------------------------------- tasks


@dataclass(frozen=True)
class Task(abc.ABC):
    """An evaluation task: data splits, batching and the metric. See the module docstring."""

    name: str
    kind: str  # "lm" | "classification"
    metric: str  # "perplexity" | "accuracy"
    input_name: str
    label_key: str  # "targets" | "labels": the extra key in eval batches

    @abc.abstractmethod
    def calibration_batches(self, n: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        """`n` batches of model inputs sampled from the train split; same seed, same batches."""
        ...

    @abc.abstractmethod
    def eval_arrays(self) -> tuple[np.ndarray | Batch, np.ndarray]:
        """(inputs, labels) of the whole eval split, in order; inputs are one array (fed as
        `input_name`) or, for a model with several inputs, a dict name → array."""
        ...

    def eval_batches(self, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """The eval split in order (the first `limit` samples if given): inputs plus `label_key`."""
        inputs, labels = self.eval_arrays()
        named = inputs if isinstance(inputs, dict) else {self.input_name: inputs}
        total = len(labels)
        count = total if limit is None else min(limit, total)
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            yield {**{k: v[start:stop] for k, v in named.items()}, self.label_key: labels[start:stop]}

    def split_batch(self, batch: Batch) -> tuple[Batch, np.ndarray]:
        """(model inputs, labels) of an eval batch."""
        inputs = {k: v for k, v in batch.items() if k != self.label_key}
        return inputs, batch[self.label_key]

    def labeled_calibration_batches(self, n: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        """The samples `calibration_batches(n, batch_size, seed)` gives, with their labels under
        `label_key` (train split: what analyses score a change on, never the eval split)."""
        raise MlpdeployError(f"task {self.name} has no labeled calibration batches")

    def evaluate(self, run_fn: RunFn, batch_size: int = 16, limit: int | None = None) -> dict:
        """Run `run_fn(inputs) -> logits` over the eval split; the metric and argmax predictions.

        Returns {"metric", "value", "predictions", "samples"}: predictions are the argmax per
        position (LM, [N, seq]) or per sample (classification, [N]), for top-1 agreement.
        """
        return self.evaluate_batches(run_fn, self.eval_batches(batch_size, limit))

    def evaluate_batches(self, run_fn: RunFn, batches) -> dict:
        """`evaluate` on given batches (inputs plus `label_key`), e.g. labeled calibration batches."""
        scores, predictions = [], []
        for batch in batches:
            inputs, labels = self.split_batch(batch)
            logits = self._output(np.asarray(run_fn(inputs)), inputs)
            self._check_output(logits, labels)
            scores.append(self._score(logits, labels))
            predictions.append(self._predict(logits))
        if not scores:
            raise MlpdeployError(f"task {self.name}: no samples to evaluate (an empty eval split or limit)")
        preds = np.concatenate(predictions)
        return {"metric": self.metric, "value": self._reduce(scores), "predictions": preds, "samples": len(preds)}

    def _check_output(self, logits: np.ndarray, labels: np.ndarray) -> None:
        """Refuse an output whose shape does not fit the labels (one line naming both)."""
        expected = labels.shape + (-1,)
        if logits.ndim != len(expected) or logits.shape[:-1] != labels.shape:
            raise MlpdeployError(
                f"task {self.name}: the model returned logits of shape {list(logits.shape)} for labels "
                f"{list(labels.shape)}; expected [{', '.join(map(str, labels.shape))}, classes]"
            )

    def _output(self, output: np.ndarray, inputs: Batch) -> np.ndarray:
        """The model's first output as the metric reads it (an encoder: pooled over its attention mask)."""
        return output

    def _predict(self, logits: np.ndarray) -> np.ndarray:
        """What top-1 agreement compares: the argmax per position or sample."""
        return logits.argmax(-1)

    def agreement(self, reference: np.ndarray, candidate: np.ndarray) -> float:
        """How far two runs' `predictions` agree: the fraction of equal argmaxes (top-1 agreement)."""
        return float(np.mean(reference == candidate))

    def calibration_source(self) -> str:
        """Where calibration data comes from, as plan.json's `calibration.source` records it."""
        return f"task:{self.name}:train"

    @abc.abstractmethod
    def _score(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        ...

    @abc.abstractmethod
    def _reduce(self, scores: list[tuple[float, int]]) -> float:
        ...

    def describe(self) -> dict:
        """A JSON-able summary: name, kind, metric and eval size."""
        _, labels = self.eval_arrays()
        return {"name": self.name, "kind": self.kind, "metric": self.metric, "eval_samples": len(labels)}


@dataclass(frozen=True)
class LMTask(Task):
    """Next-byte prediction on the stdlib corpus; perplexity = exp(mean NLL over every target)."""

    name: str = "stdlib-bytes"
    kind: str = "lm"
    metric: str = "perplexity"
    input_name: str = "input_ids"
    label_key: str = "targets"
    seq_len: int = 128

    def _splits(self) -> tuple[np.ndarray, np.ndarray]:
        train, evaluation = stdlib_corpus()
        return np.frombuffer(train, dtype=np.uint8), np.frombuffer(evaluation, dtype=np.uint8)

    def train_windows(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """`batch_size` random windows [batch, seq_len + 1] (int64) of the train split."""
        train, _ = self._splits()
        starts = rng.integers(0, len(train) - self.seq_len - 1, size=batch_size)
        return np.stack([train[s:s + self.seq_len + 1] for s in starts]).astype(np.int64)

    def calibration_batches(self, n: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        for batch in self.labeled_calibration_batches(n, batch_size, seed):
            yield {self.input_name: batch[self.input_name]}

    def labeled_calibration_batches(self, n: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        rng = np.random.default_rng(seed)
        for _ in range(n):
            windows = self.train_windows(rng, batch_size)
            yield {self.input_name: windows[:, :-1], self.label_key: windows[:, 1:]}

    def eval_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        _, evaluation = self._splits()
        count = (len(evaluation) - 1) // self.seq_len
        idx = np.arange(count)[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None]
        windows = evaluation[idx].astype(np.int64)
        return windows[:, :-1], windows[:, 1:]

    def _score(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        flat, targets = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        total = 0.0
        for start in range(0, len(flat), SCORE_ROWS):  # float64 in slices: a real vocab's logits are large
            z = flat[start:start + SCORE_ROWS].astype(np.float64)
            z -= z.max(-1, keepdims=True)
            log_norm = np.log(np.exp(z).sum(-1))
            picked = np.take_along_axis(z, targets[start:start + SCORE_ROWS, None], -1)[:, 0]
            total += float((log_norm - picked).sum())
        return total, labels.size

    def _reduce(self, scores: list[tuple[float, int]]) -> float:
        return float(np.exp(sum(s for s, _ in scores) / sum(c for _, c in scores)))

    def unigram_perplexity(self) -> float:
        """Baseline: perplexity on the eval targets of byte frequencies counted on the train split (add-one)."""
        train, _ = self._splits()
        counts = np.bincount(train, minlength=256).astype(np.float64) + 1.0
        log_p = np.log(counts / counts.sum())
        _, targets = self.eval_arrays()
        return float(np.exp(-log_p[targets].mean()))

    def describe(self) -> dict:
        return {**super().describe(), "seq_len": self.seq_len, "eval_tokens": int(self.eval_arrays()[1].size)}


@dataclass(frozen=True)
class DigitsTask(Task):
    """Digit classification on scikit-learn's 8×8 digits, resized to `image_size` × `channels`."""

    name: str = "digits"
    kind: str = "classification"
    metric: str = "accuracy"
    input_name: str = "pixel_values"
    label_key: str = "labels"
    image_size: int = 8
    channels: int = 1

    def __post_init__(self):
        if self.image_size % 8:
            raise MlpdeployError(f"digits task: image_size {self.image_size} must be a multiple of 8 (the digits are 8×8)")

    def _resize(self, images: np.ndarray) -> np.ndarray:
        scale = self.image_size // 8
        if scale > 1:
            images = images.repeat(scale, axis=2).repeat(scale, axis=3)
        if self.channels > 1:
            images = images.repeat(self.channels, axis=1)
        return np.ascontiguousarray(images, dtype=np.float32)

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(images [N, channels, size, size] float32, labels [N] int64) of `train` or `eval`."""
        images, labels = digits_split(split)
        return self._resize(images), labels

    def calibration_batches(self, n: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        for batch in self.labeled_calibration_batches(n, batch_size, seed):
            yield {self.input_name: batch[self.input_name]}

    def labeled_calibration_batches(self, n: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        images, labels = digits_split("train")
        rng = np.random.default_rng(seed)
        for _ in range(n):
            idx = rng.integers(0, len(images), size=batch_size)
            yield {self.input_name: self._resize(images[idx]), self.label_key: labels[idx]}

    def eval_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return self.split("eval")

    def _score(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        return float((logits.argmax(-1) == labels).sum()), labels.size

    def _reduce(self, scores: list[tuple[float, int]]) -> float:
        return sum(s for s, _ in scores) / sum(c for _, c in scores)

    def describe(self) -> dict:
        return {**super().describe(), "image_size": self.image_size, "channels": self.channels}
