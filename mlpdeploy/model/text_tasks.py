"""Tasks on a user's text (`--data`): causal language modelling and sentence encoding.

Documents (`mlpdeploy.model.documents`) are split into calibration and held-out documents first,
then tokenized with the model's own tokenizer (`mlpdeploy.model.tokenize`), so no window holds
text of both splits.

* **causal LM** (`TextLMTask`, metric perplexity, plus top-1 agreement with torch): each split's
  documents are concatenated in order (each with the tokenizer's own special tokens, else ended by
  EOS). Held-out windows are consecutive, `seq_len + 1` tokens stepping by `seq_len` (inputs and
  next-token targets, as the zoo's byte task); calibration windows start at seeded random offsets.
* **encoder** (`EncoderTask`, metric cosine): every document is cut into windows of at most
  `seq_len` tokens including its special tokens ([CLS] … [SEP]), padded with attention mask 0.
  The metric is the mean cosine between the model's output mean-pooled over the attention mask and
  the torch model's (1.0 for the torch model itself), computed once when the task is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.data import Batch, LMTask, Task
from mlpdeploy.model.documents import TextData, split_documents
from mlpdeploy.model.tokenize import TextTokenizer


def token_stream(documents: list[str], tokenizer: TextTokenizer) -> np.ndarray:
    """The documents' tokens, concatenated in order (int64)."""
    ids = [t for doc in documents for t in tokenizer.document(doc)]
    return np.asarray(ids, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class TextLMTask(LMTask):
    """Perplexity on held-out windows of a user's text; calibration windows from the other documents."""

    name: str = "data"
    calibration_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    eval_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    source: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        for split, tokens in (("calibration", self.calibration_tokens), ("held-out", self.eval_tokens)):
            if len(tokens) < self.seq_len + 2:
                raise MlpdeployError(f"the {split} text holds {len(tokens)} tokens, too few for one window of --seq-len {self.seq_len} "
                                     f"(needs {self.seq_len + 2}); give more text or a smaller --seq-len")

    def _splits(self) -> tuple[np.ndarray, np.ndarray]:
        return self.calibration_tokens, self.eval_tokens

    def calibration_source(self) -> str:
        return self.source

    def unigram_perplexity(self) -> float:
        vocab = int(max(self.calibration_tokens.max(), self.eval_tokens.max())) + 1
        counts = np.bincount(self.calibration_tokens, minlength=vocab).astype(np.float64) + 1.0
        _, targets = self.eval_arrays()
        return float(np.exp(-np.log(counts / counts.sum())[targets].mean()))

    def describe(self) -> dict:
        return {**super().describe(), **self.info, "calibration_tokens": int(len(self.calibration_tokens))}


def text_lm_task(data: TextData, tokenizer: TextTokenizer, seq_len: int, source: str) -> TextLMTask:
    """The causal-LM task on `data` (see the module docstring)."""
    calibration, held_out = split_documents(data.documents)
    docs = data.documents
    return TextLMTask(
        name=f"data:{data.path.name}",
        seq_len=seq_len,
        calibration_tokens=token_stream([docs[i] for i in calibration], tokenizer),
        eval_tokens=token_stream([docs[i] for i in held_out], tokenizer),
        source=source,
        info={"tokenizer": tokenizer.name, "documents": {"calibration": len(calibration), "held_out": len(held_out)},
              "chunked": data.chunked},
    )


def encoder_windows(documents: list[str], tokenizer: TextTokenizer, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) [windows, seq_len]: each document's tokens in pieces that fit
    `seq_len` with the tokenizer's special tokens around each, right-padded (mask 0)."""
    room = seq_len - len(tokenizer.prefix) - len(tokenizer.suffix)
    if room < 1:
        raise MlpdeployError(f"--seq-len {seq_len} leaves no room for text beside the tokenizer's {seq_len - room} special tokens")
    rows = []
    for doc in documents:
        ids = tokenizer.encode(doc)
        rows.extend(tokenizer.prefix + ids[i:i + room] + tokenizer.suffix for i in range(0, len(ids), room))
    input_ids = np.full((len(rows), seq_len), tokenizer.pad, np.int64)
    mask = np.zeros((len(rows), seq_len), np.int64)
    for r, row in enumerate(rows):
        input_ids[r, :len(row)] = row
        mask[r, :len(row)] = 1
    return input_ids, mask


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[batch, seq, dim] averaged over the positions whose mask is 1 → [batch, dim] (float64)."""
    weights = mask.astype(np.float64)[..., None]
    return (hidden.astype(np.float64) * weights).sum(1) / np.maximum(weights.sum(1), 1.0)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows (0 where a row is all zeros)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return np.where(norms > 0, (a * b).sum(-1) / np.where(norms > 0, norms, 1.0), 0.0)


@dataclass(frozen=True, eq=False)
class EncoderTask(Task):
    """Cosine of the pooled output against the torch model's, on held-out windows of a user's text."""

    name: str = "data"
    kind: str = "encoder"
    metric: str = "cosine"
    input_name: str = "input_ids"
    label_key: str = "reference"
    calibration: Batch = field(default_factory=dict, repr=False)  # input_ids, attention_mask, reference
    evaluation: Batch = field(default_factory=dict, repr=False)
    source: str = ""
    info: dict = field(default_factory=dict)

    def calibration_batches(self, n: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        for batch in self.labeled_calibration_batches(n, batch_size, seed):
            yield {k: v for k, v in batch.items() if k != self.label_key}

    def labeled_calibration_batches(self, n: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        rows = len(self.calibration[self.label_key])
        rng = np.random.default_rng(seed)
        for _ in range(n):
            idx = rng.integers(0, rows, size=batch_size)
            yield {k: v[idx] for k, v in self.calibration.items()}

    def eval_arrays(self) -> tuple[Batch, np.ndarray]:
        inputs = {k: v for k, v in self.evaluation.items() if k != self.label_key}
        return inputs, self.evaluation[self.label_key]

    def _output(self, output: np.ndarray, inputs: Batch) -> np.ndarray:
        if output.ndim != 3:
            raise MlpdeployError(f"task {self.name}: the encoder returned an output of shape {list(output.shape)}; "
                                 "expected [batch, seq, hidden] (last_hidden_state) to pool over its attention mask")
        return mean_pool(output, inputs["attention_mask"])

    def _check_output(self, logits: np.ndarray, labels: np.ndarray) -> None:
        if logits.shape != labels.shape:
            raise MlpdeployError(f"task {self.name}: pooled output of shape {list(logits.shape)} does not match torch's {list(labels.shape)}")

    def _predict(self, logits: np.ndarray) -> np.ndarray:
        return logits  # agreement compares the pooled vectors themselves

    def agreement(self, reference: np.ndarray, candidate: np.ndarray) -> float:
        """The mean cosine of the two runs' pooled outputs."""
        return float(cosine_rows(reference, candidate).mean())

    def _score(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        return float(cosine_rows(logits, labels).sum()), len(labels)

    def _reduce(self, scores: list[tuple[float, int]]) -> float:
        return sum(s for s, _ in scores) / sum(c for _, c in scores)

    def calibration_source(self) -> str:
        return self.source

    def describe(self) -> dict:
        return {**super().describe(), **self.info, "calibration_samples": int(len(self.calibration[self.label_key]))}


def _with_reference(inputs: Batch, reference_fn: Callable[[Batch], np.ndarray], batch_size: int = 16) -> Batch:
    pooled = [mean_pool(np.asarray(reference_fn({k: v[i:i + batch_size] for k, v in inputs.items()})), inputs["attention_mask"][i:i + batch_size])
              for i in range(0, len(inputs["input_ids"]), batch_size)]
    return {**inputs, "reference": np.concatenate(pooled).astype(np.float32)}


def encoder_task(data: TextData, tokenizer: TextTokenizer, seq_len: int, source: str, reference_fn: Callable[[Batch], np.ndarray],
                 *, calibration_samples: int, eval_samples: int) -> EncoderTask:
    """The encoder task on `data`: at most `calibration_samples` calibration windows (a seeded
    choice) and the first `eval_samples` held-out windows, each with torch's pooled output."""
    calibration, held_out = split_documents(data.documents)
    docs = data.documents
    cal_ids, cal_mask = encoder_windows([docs[i] for i in calibration], tokenizer, seq_len)
    ev_ids, ev_mask = encoder_windows([docs[i] for i in held_out], tokenizer, seq_len)
    pick = np.sort(np.random.default_rng(0).permutation(len(cal_ids))[:calibration_samples])
    cal = _with_reference({"input_ids": cal_ids[pick], "attention_mask": cal_mask[pick]}, reference_fn)
    ev = _with_reference({"input_ids": ev_ids[:eval_samples], "attention_mask": ev_mask[:eval_samples]}, reference_fn)
    info = {"tokenizer": tokenizer.name, "seq_len": seq_len, "documents": {"calibration": len(calibration), "held_out": len(held_out)},
            "held_out_windows": len(ev_ids), "chunked": data.chunked}
    return EncoderTask(name=f"data:{data.path.name}", calibration=cal, evaluation=ev, source=source, info=info)
