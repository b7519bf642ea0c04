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


def test_rows_of_their_own_lengths(builds):
    """Row-lengths layout: each row keeps its tokens in columns 0..length-1 of its buffer row; a
    step appends at every row's own length and each row's logits are bit for bit its solo logits;
    a rewind sets one row's length; a leading-row view of the buffers runs the first rows alone."""
    stepper = Stepper(builds["shared"])
    assert stepper.row_lengths and not Stepper(builds["plain"]).row_lengths
    prompts = [PROMPT, list(b"for i in"), list(b"x")]
    buffers = stepper.cache_buffers(len(prompts), 64)
    firsts = []
    for row, prompt in enumerate(prompts):
        row_state = stepper.rows_state({n: b[row:row + 1] for n, b in buffers.items()}, [0])
        firsts.append(stepper.step(row_state, np.array([prompt]))[0, -1])
        assert row_state.positions.tolist() == [len(prompt)] and row_state.length == len(prompt)
    state = stepper.rows_state(buffers, [len(p) for p in prompts])
    together = np.stack([stepper.step(state, np.array([[t]] * len(prompts)))[:, -1] for t in THEN], axis=1)
    assert state.positions.tolist() == [len(p) + len(THEN) for p in prompts] and state.length == len(PROMPT) + len(THEN)
    for row, prompt in enumerate(prompts):
        logits, alone = stepper.prefill([prompt], 64)
        np.testing.assert_array_equal(firsts[row], logits[0])
        np.testing.assert_array_equal(together[row], _continue(stepper, alone, THEN), err_msg=f"row {row}")
    # rewind row 1 by two tokens and feed two others: row 1 computes what it would alone
    stepper.rewind(state, state.positions - [0, 2, 0])
    after = np.stack([stepper.step(state, np.array([[t]] * 3))[:, -1] for t in FED[:2]], axis=1)
    _, alone = stepper.prefill([prompts[1]], 64)
    _continue(stepper, alone, THEN[:1])
    np.testing.assert_array_equal(after[1], _continue(stepper, alone, FED[:2]))
    # the first two rows alone, through a view of the same buffers
    pair = stepper.rows_state({n: b[:2] for n, b in buffers.items()}, state.positions[:2])
    stepper.step(pair, np.array([[THEN[0]], [THEN[0]]]))
    assert pair.positions.tolist() == (state.positions[:2] + 1).tolist()


def test_row_lengths_errors(builds):
    stepper = Stepper(builds["shared"])
    state = stepper.new_state(2, 8, row_lengths=True)
    with pytest.raises(MlpdeployError, match="takes no padding"):
        stepper.step(state, np.zeros((2, 2), np.int64), np.array([[True, True], [False, True]]))
    with pytest.raises(MlpdeployError, match="prefilled for 8 positions"):
        stepper.step(state, np.zeros((2, 9), np.int64))
    with pytest.raises(MlpdeployError, match="built without per-row cache lengths"):
        Stepper(builds["plain"]).new_state(1, 8, row_lengths=True)


def test_lazy_zeros_map_only_the_pages_written():
    """Cache buffers take memory for the tokens written, not for 2 MB huge pages per row and head
    (numpy's np.zeros would: 20 × 3 × 2 MB here)."""
    from pathlib import Path

    from mlpdeploy.runtime.step import lazy_zeros

    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("needs Linux /proc")

    def resident() -> int:
        return int(statm.read_text().split()[1]) * 4096

    small = lazy_zeros((2, 3), np.float32)
    assert small.shape == (2, 3) and not small.any()
    buffers = [lazy_zeros((4, 3, 8192, 64), np.float32) for _ in range(20)]
    assert buffers[0].dtype == np.float32 and buffers[0].flags.writeable and not buffers[0][1].any()
    before = resident()
    for buffer in buffers:
        buffer[1, :, :40] = 1.0
    assert resident() - before < 16 << 20
    assert all(float(b.sum()) == 3 * 40 * 64 for b in buffers)


@pytest.mark.parametrize("kind, keeps", [("shared", True), ("plain", False)])
def test_last_only_gives_the_last_columns_logits(builds, kind, keeps):
    """A build with `logits_to_keep` (GroupQueryAttention builds) computes the lm_head on the last
    column only; one without gives every column and the step keeps the last. Both equal the full step's."""
    stepper = Stepper(builds[kind])
    assert stepper.keeps_logits is keeps
    capacity = len(PROMPT) + len(FED) + len(THEN)
    _, full = stepper.prefill([PROMPT], capacity)
    every = stepper.step(full, np.array([FED]))
    _, state = stepper.prefill([PROMPT], capacity)
    last = stepper.step(state, np.array([FED]), last_only=True)
    assert last.shape == ((1, 1, stepper.vocab) if keeps else (1, len(FED), stepper.vocab))
    np.testing.assert_allclose(last[:, -1], every[:, -1], atol=1e-6, rtol=1e-6)
    then = stepper.step(state, np.array([[THEN[0]]]))  # the next step gets every column again: the binding does not keep 1
    np.testing.assert_allclose(then, stepper.step(full, np.array([[THEN[0]]])), atol=1e-6, rtol=1e-6)
    two = stepper.step(state, np.array([THEN[1:]]))
    assert two.shape == (1, len(THEN) - 1, stepper.vocab)


def test_reuse_logits_returns_the_bound_array_and_the_default_a_copy(builds):
    """A one-token step returns a fresh array by default (earlier results stay as they were); with
    `reuse_logits` it returns the array the next step overwrites, holding the same values."""
    stepper = Stepper(builds["shared"])
    fresh = stepper.new_state(1, 64)
    stepper.step(fresh, np.array([PROMPT]))
    first = stepper.step(fresh, np.array([[THEN[0]]]))
    kept = first.copy()
    second = stepper.step(fresh, np.array([[THEN[1]]]))
    assert first is not second and np.array_equal(first, kept) and not np.array_equal(first, second)

    reused = stepper.new_state(1, 64)
    reused.reuse_logits = True
    stepper.step(reused, np.array([PROMPT]))
    a = stepper.step(reused, np.array([[THEN[0]]]))
    assert np.array_equal(a, kept)
    b = stepper.step(reused, np.array([[THEN[1]]]))
    assert a is b and np.array_equal(b, second)
