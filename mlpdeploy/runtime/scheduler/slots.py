"""The running batch's cache: one buffer row per sequence, each row its own length.

Every past input has one array [max_batch, kv_heads, columns, head_dim]; row r holds sequence
r's tokens in columns 0..length-1 (the step function's row-lengths layout). The sequences in the
batch occupy rows 0..active-1 and a decode step binds exactly those rows — contiguous leading-row
views of the arrays, so no row is copied to run. A joining sequence's prompt, prefilled in buffers
of its own, is copied into the next free row; a sequence that leaves hands its row to the last one
(its columns copied). The arrays are zeroed once and the OS maps their pages as rows write them,
so memory follows the tokens held. (Prefilling straight into a row would not: ONNX Runtime's
GroupQueryAttention writes a first prompt's whole cache buffer, every column of it.)
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
        self.lengths = np.zeros(rows, np.int64)
        self.requests: list[Request] = []
        self.pending: list[int] = []  # per active row: the token its next step feeds
        self._state: StepState | None = None

    @property
    def active(self) -> int:
        return len(self.requests)

    def state(self) -> StepState:
        """The step state over rows 0..active-1 (kept while the batch does not change)."""
        if self._state is None:
            views = {name: buffer[: self.active] for name, buffer in self.buffers.items()}
            self._state = self.stepper.rows_state(views, self.lengths[: self.active])
            self._state.reuse_logits = True  # the scheduler picks every row's token before the next step
        return self._state

    @property
    def column_bytes(self) -> int:
        """Bytes of one cache column of one row, over every buffer."""
        return sum(b[0, :, 0].nbytes for b in self.buffers.values())

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

    def leave(self, row: int) -> Request:
        """Remove the sequence of active row `row`; the last active row moves into it."""
        self._sync()
        last = self.active - 1
        request = self.requests[row]
        if row != last:
            self._copy(last, row, int(self.lengths[last]))
            self.lengths[row] = self.lengths[last]
            self.requests[row], self.pending[row] = self.requests[last], self.pending[last]
        self.requests.pop()
        self.pending.pop()
        self.lengths[last] = 0
        self._state = None
        return request

    def clear(self) -> list[Request]:
        """Drop every sequence (after a failed step); returns them."""
        requests, self.requests, self.pending, self._state = self.requests, [], [], None
        self.lengths[:] = 0
        return requests

    def _sync(self) -> None:
        """Fold the live state's lengths (the step function advances them) back into `lengths`."""
        if self._state is not None:
            self.lengths[: self.active] = self._state.positions

    def _copy(self, source: int, target: int, length: int) -> None:
        for buffer in self.buffers.values():
            buffer[target, :, :length] = buffer[source, :, :length]
