"""Near-ties: greedy tokens whose top-2 logits were so close that another kernel could flip them.

A speculative verify step scores k tokens at once, and ONNX Runtime computes a k-token run with
other kernels (GEMM instead of GEMV, other accumulation orders, another graph) than a one-token
step, so its logits differ from plain decoding's in the last bits. Greedy output is the same
unless the two best tokens were nearly tied. Every greedy run records each token picked with a
top-2 gap under `margin` (the row's token index and the gap), so a difference from plain
decoding can be told apart from a bug: a difference where neither run recorded a near-tie is one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlpdeploy.errors import MlpdeployError

# Top-2 gaps in logit units. Measured (docs/decoding.md): between one-token steps and 9-token verify
# steps over the same tokens, the gap of the top-2 tokens moved by at most 0.46 (p99 0.39, 288
# positions) in SmolLM2-135M int4 at accuracy level 4 — MatMulNBits quantizes activations to int8,
# which turns last-bit differences upstream into whole quantization steps — and logits by ~3e-5
# in float builds.
INT8_ACTIVATIONS_MARGIN = 0.5
FLOAT_MARGIN = 0.01
DEFAULT_MARGIN = INT8_ACTIVATIONS_MARGIN


@dataclass(frozen=True)
class NearTie:
    index: int  # the token's index among the row's generated tokens
    gap: float  # top-1 minus top-2 logit


def top2_gap(logits: np.ndarray) -> float:
    """Top-1 minus top-2 of one row of logits [vocab]."""
    best = int(logits.argmax())
    top = logits[best]
    if logits.size < 2:
        return float("inf")
    if not logits.flags.writeable:
        logits = logits.copy()
    logits[best] = -np.inf  # two passes over the row, no copy (restored below)
    second = logits.max()
    logits[best] = top
    return float(top - second)


def default_margin(manifest) -> float:
    """The near-tie margin for an artifact: INT8_ACTIVATIONS_MARGIN when a quantize-weights pass in its
    history computes with int8 activations (accuracy level 4, the default), else FLOAT_MARGIN."""
    from mlpdeploy.passes.quantize_weights import DEFAULT_ACCURACY_LEVEL

    for entry in manifest.history:
        for spec in entry.get("passes", []) if entry.get("stage") == "rewrite" else []:
            name, _, options = str(spec).partition(":")
            if name != "quantize-weights":
                continue
            level = dict(o.partition("=")[::2] for o in options.split(",") if "=" in o).get("accuracy_level", DEFAULT_ACCURACY_LEVEL)
            if int(level) == 4:
                return INT8_ACTIVATIONS_MARGIN
    return FLOAT_MARGIN


class TieRecorder:
    """Collects the near-ties of a batch's rows."""

    def __init__(self, batch: int, margin: float = DEFAULT_MARGIN):
        self.margin = margin
        self.ties: list[list[NearTie]] = [[] for _ in range(batch)]

    def record(self, row: int, index: int, logits: np.ndarray) -> None:
        gap = top2_gap(logits)
        if gap < self.margin:
            self.ties[row].append(NearTie(index, gap))


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where two token lists differ (a shorter list differs where it ends), or None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def check_same_greedy(plain: list[int], other: list[int], ties: list[NearTie], plain_ties: list[NearTie] = ()) -> int | None:
    """Where `other` first departs from `plain` (None: identical); an error when it departs at a
    token neither run recorded as a near-tie. A list that stops earlier (a stop token) only
    departs if the other one did not stop there too."""
    index = first_difference(plain, other)
    if index is None or index >= min(len(plain), len(other)):
        return None
    recorded = {t.index for t in ties} | {t.index for t in plain_ties}
    if index not in recorded:
        raise MlpdeployError(f"greedy output departs from plain decoding at token {index} ({plain[index]} vs {other[index]}) "
                             "with no near-tie recorded there: a bug in speculative decoding")
    return index
