"""The running batch's cache: one buffer row per sequence, each row its own length.

Every past input has one array [max_batch, kv_heads, columns, head_dim]; row r holds sequence
r's tokens in columns 0..length-1 (the step function's row-lengths layout). The sequences in the
batch occupy rows 0..active-1 and a decode step binds exactly those rows — contiguous leading-row
views of the arrays, so no row is copied to run. A sequence that leaves hands its row to the last
one (its columns copied, the only copy a leave costs); a joining sequence is prefilled straight
into the next free row. The arrays are zeroed once: the OS maps their pages as rows write them.
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
        return self._state

    def row_state(self, row: int) -> StepState:
        """A one-row state over buffer row `row`, empty: a prefill writes the row's prompt there."""
        return self.stepper.rows_state({name: buffer[row:row + 1] for name, buffer in self.buffers.items()}, [0])

    def join(self, request: Request, row: int, length: int, pending: int) -> None:
        """Add `request`, whose `length` tokens were written into buffer row `row`, as the next active row."""
        self._sync()
        target = self.active
        if row != target:
            self._copy(row, target, length)
        self.lengths[target] = length
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
