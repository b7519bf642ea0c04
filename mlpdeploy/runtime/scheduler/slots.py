"""The running batch's cache: one buffer row per sequence, each row its own length.

Every past input has one array [max_batch, kv_heads, columns, head_dim]; row r holds sequence
r's tokens in columns 0..length-1 (the step function's row-lengths layout). The sequences in the
batch occupy rows 0..active-1 and a decode step binds exactly those rows — contiguous leading-row
views of the arrays, so no row is copied to run. A joining sequence's prompt, prefilled in buffers
of its own, is copied into the next free row; a sequence that leaves hands its row to the last one
(its columns copied). When the last row holds more than `piece_bytes` of cache, that copy goes a
piece a step (a 1,000-token SmolLM2 row is 46 MB: 25–44 ms at once, measured): the row left stays
in the batch as a hole — stepped with a dummy token at the last row's length, its logits unused,
so that its own writes land past the columns copied so far — until the last row's columns are all
in it; then the last row's sequence takes it over. The arrays are zeroed once and the OS maps
their pages as rows write them, so memory follows the tokens held. (Prefilling straight into a
row would not: ONNX Runtime's GroupQueryAttention writes a first prompt's whole cache buffer, every
column of it.)
"""

from __future__ import annotations

import numpy as np

from mlpdeploy.runtime.scheduler.request import Request
from mlpdeploy.runtime.step import Stepper, StepState


class Slots:
    """Rows of the cache, the sequences in them and the token each feeds next."""

    def __init__(self, stepper: Stepper, rows: int, columns: int):
        self.stepper, self.rows, self.columns = stepper, rows, columns
        self.buffers = stepper.cache_buffers(rows, columns)
        self.column_bytes = sum(b[0, :, 0].nbytes for b in self.buffers.values())  # one row's column, every buffer
        self.lengths = np.zeros(rows, np.int64)
        self.requests: list[Request | None] = []  # None: a hole (module docstring)
        self.pending: list[int] = []  # per active row: the token its next step feeds
        self.moving: list[int] | None = None  # [hole, columns of the last row copied into it]
        self._state: StepState | None = None

    @property
    def active(self) -> int:
        """Rows a step runs: the sequences, and a hole while the last row moves into it."""
        return len(self.requests)

    @property
    def live(self) -> int:
        """Sequences in the batch (the active rows but a hole)."""
        return self.active - (self.moving is not None)

    def state(self) -> StepState:
        """The step state over rows 0..active-1 (kept while the batch does not change)."""
        if self._state is None:
            views = {name: buffer[: self.active] for name, buffer in self.buffers.items()}
            self._state = self.stepper.rows_state(views, self.lengths[: self.active])
            self._state.reuse_logits = True  # the scheduler picks every row's token before the next step
        return self._state

    def stage(self, prefilled: dict[str, np.ndarray], start: int, end: int) -> None:
        """Copy columns start..end-1 of `prefilled` (one-row cache arrays, as `Stepper.cache_buffers(1, …)`
        makes them) into the next free row, which no step binds yet: a long prompt's cache goes into its
        row over several steps (`Joining`). A row leaving meanwhile moves the next free row down: what
        was staged is then in the wrong row (`Joining` starts over)."""
        row = self.active
        for name, buffer in self.buffers.items():
            buffer[row, :, start:end] = prefilled[name][0, :, start:end]

    def join(self, request: Request, prefilled: dict[str, np.ndarray], length: int, pending: int, staged: int = 0) -> None:
        """Add `request` as the next active row: its `length` prompt tokens copied from `prefilled`
        (the first `staged` columns are there already: `stage`), `pending` its next token."""
        self._sync()
        row = self.active
        self.stage(prefilled, staged, length)
        self.lengths[row] = length
        self.requests.append(request)
        self.pending.append(pending)
        self._state = None

    def leave(self, request: Request, piece_bytes: int | None = None) -> None:
        """Remove `request`'s row; the last active row moves into it — at once, or with `piece_bytes`
        and a last row holding more, a piece a step (`advance_move`; module docstring). Rows move as
        sequences leave, so a sequence is named, not its row."""
        if self.moving is not None:  # one move at a time: the one under way ends first
            self.finish_move()
        row = self.requests.index(request)
        self._sync()
        last = self.active - 1
        if row != last and piece_bytes is not None and int(self.lengths[last]) * self.column_bytes > piece_bytes:
            self.requests[row], self.pending[row], self.lengths[row] = None, 0, self.lengths[last]
            self.moving = [row, 0]
            self._state = None
            return
        if row != last:
            self._copy(last, row, 0, int(self.lengths[last]))
            self.lengths[row] = self.lengths[last]
            self.requests[row], self.pending[row] = self.requests[last], self.pending[last]
        self._pop()

    def advance_move(self, piece_bytes: int) -> None:
        """Copy the next piece of the last row into the hole, or the rest and end the move."""
        if self.moving is None:
            return
        self._sync()
        hole, copied = self.moving
        length = int(self.lengths[self.active - 1])
        end = copied + max(2, piece_bytes // self.column_bytes)  # 2 at least: the row grows 1 a step
        if end >= length:
            self.finish_move()
            return
        self._copy(self.active - 1, hole, copied, end)
        self.moving[1] = end

    def finish_move(self) -> None:
        """The rest of the last row into the hole; the last row's sequence takes the hole's place."""
        self._sync()
        (hole, copied), last = self.moving, self.active - 1
        self.moving = None
        self._copy(last, hole, copied, int(self.lengths[last]))
        self.lengths[hole] = self.lengths[last]
        self.requests[hole], self.pending[hole] = self.requests[last], self.pending[last]
        self._pop()

    def _pop(self) -> None:
        """Drop the last active row."""
        self.requests.pop()
        self.pending.pop()
        self.lengths[self.active] = 0
        self._state = None

    def clear(self) -> list[Request]:
        """Drop every sequence (after a failed step); returns them."""
        requests, self.requests, self.pending, self._state, self.moving = self.requests, [], [], None, None
        self.lengths[:] = 0
        return [r for r in requests if r is not None]

    def _sync(self) -> None:
        """Fold the live state's lengths (the step function advances them) back into `lengths`."""
        if self._state is not None:
            self.lengths[: self.active] = self._state.positions

    def _copy(self, source: int, target: int, start: int, end: int) -> None:
        for buffer in self.buffers.values():
            buffer[target, :, start:end] = buffer[source, :, start:end]
