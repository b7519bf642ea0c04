"""The step function: k tokens per row, rewind to any count, per-row padding and holes — each
compared with a fresh run that fed only the tokens kept."""

from __future__ import annotations

import numpy as np
import pytest

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.step import Stepper

PROMPT = list(b"def add(a, b):\n    return")
FED = list(b" a + b\n\n")  # the last token and 7 drafts, as a verify step feeds them
THEN = list(b"def")


@pytest.fixture(scope="module")
def builds(zoo_export, tmp_path_factory):
    """llama-tiny with a KV cache, built with a shared cache buffer (GroupQueryAttention) and without (the exported attention)."""
    from mlpdeploy.backends import get_backend
    from mlpdeploy.backends.onnxruntime import OrtOptions

    _, exported = zoo_export("llama-tiny", kv_cache=True)
    out = tmp_path_factory.mktemp("step")
    backend = get_backend("onnxruntime")
    backend.build(exported, out / "shared.ort.onnx", OrtOptions(device="cpu"))
    backend.build(exported, out / "plain.ort.onnx", OrtOptions(device="cpu", fusions=False))
    engines = {"shared": Engine.load(out / "shared.ort.onnx"), "plain": Engine.load(out / "plain.ort.onnx")}
    assert engines["shared"].cache.shared_buffer and not engines["plain"].cache.shared_buffer
    return engines


def _continue(stepper: Stepper, state, tokens: list[int]) -> np.ndarray:
    return np.stack([stepper.step(state, np.array([[t]]))[0, -1] for t in tokens])


@pytest.mark.parametrize("kind", ["shared", "plain"])
def test_rewind_at_every_acceptance_length(builds, kind):
    stepper = Stepper(builds[kind])
    capacity = len(PROMPT) + len(FED) + len(THEN)
    for keep in range(len(FED) + 1):
        _, state = stepper.prefill([PROMPT], capacity)
        verify = stepper.step(state, np.array([FED]))
        assert verify.shape == (1, len(FED), stepper.vocab)
        stepper.rewind(state, [len(PROMPT) + keep])
        assert state.length == len(PROMPT) + keep and state.positions.tolist() == [len(PROMPT) + keep] and state.contiguous
        after = _continue(stepper, state, THEN)
        _, fresh = stepper.prefill([PROMPT + FED[:keep]], capacity)
        expected = _continue(stepper, fresh, THEN)
        np.testing.assert_allclose(after, expected, atol=1e-4, err_msg=f"keep {keep}")
    # the verify step's logits are those of one-token steps over the same tokens
    _, state = stepper.prefill([PROMPT], capacity)
    one_by_one = _continue(stepper, state, FED)
    np.testing.assert_allclose(verify[0], one_by_one, atol=1e-4)


@pytest.mark.parametrize("kind", ["shared", "plain"])
def test_rows_keep_different_counts(builds, kind):
    """Two rows keep 2 and 6 of a step's tokens: the shorter row's let-go columns become holes
    in its mask, and each row goes on as if alone."""
    stepper = Stepper(builds[kind])
    prompts = [PROMPT, list(b"for i in")]
    capacity = 64
    _, state = stepper.prefill(prompts, capacity)
    stepper.step(state, np.array([FED[:6], list(b" range")]))
    before = state.positions - 6
    stepper.rewind(state, before + [2, 6])
    assert not state.contiguous and state.length == len(PROMPT) + 6
    together = np.stack([stepper.step(state, np.array([[t], [t]]))[:, -1] for t in THEN], axis=1)
    for row, (prompt, kept) in enumerate(zip(prompts, [FED[:2], list(b" range")])):
        _, alone = stepper.prefill([prompt + kept], capacity)
        np.testing.assert_allclose(together[row], _continue(stepper, alone, THEN), atol=1e-4, err_msg=f"row {row}")


def test_padding_inside_a_step(builds):
    """Rows fed different numbers of tokens in one step (invalid columns first, as a drafter's
    catch-up step feeds them) compute what each row computes alone."""
    stepper = Stepper(builds["shared"])
    _, state = stepper.prefill([PROMPT, PROMPT], 64)
    ids = np.array([[0, 0] + FED[:2], FED[:4]])
    valid = np.array([[False, False, True, True], [True] * 4])
    logits = stepper.step(state, ids, valid)
    assert state.positions.tolist() == [len(PROMPT) + 2, len(PROMPT) + 4]
    for row, fed in enumerate([FED[:2], FED[:4]]):
        _, alone = stepper.prefill([PROMPT], 64)
        np.testing.assert_allclose(logits[row, -1], stepper.step(alone, np.array([fed]))[0, -1], atol=1e-4, err_msg=f"row {row}")
    after = np.stack([stepper.step(state, np.array([[t], [t]]))[:, -1] for t in THEN], axis=1)
    for row, fed in enumerate([FED[:2], FED[:4]]):
        _, alone = stepper.prefill([PROMPT + fed], 64)
        np.testing.assert_allclose(after[row], _continue(stepper, alone, THEN), atol=1e-4, err_msg=f"row {row} after")


def test_rewind_errors(builds):
    stepper = Stepper(builds["shared"])
    _, state = stepper.prefill([PROMPT], 40)
    with pytest.raises(MlpdeployError, match="cannot rewind to"):
        stepper.rewind(state, [len(PROMPT) + 1])
    with pytest.raises(MlpdeployError, match="prefilled for 40 positions and has used them all"):
        stepper.step(state, np.zeros((1, 40 - len(PROMPT) + 1), np.int64))
    with pytest.raises(MlpdeployError, match="a cache of 300 columns exceeds the model's 128 positions"):
        stepper.new_state(1, 300)
