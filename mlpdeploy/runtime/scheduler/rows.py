"""The running batch's cache for builds that take ragged steps: a sequence keeps one row from its
prefill to its end.

With CachedAttention's ragged mode (`Stepper.step_segments`) one session run feeds each row its
own tokens, so the whole cache [max_batch, kv_heads, columns, head_dim] is bound once and a step
names the rows it feeds: a prompt is prefilled straight into the row it will decode in (its chunks
ride in the others' decode steps), and a sequence that ends frees its row where it is — nothing
is copied between rows and no row stands empty in a step (compare `Slots`, which keeps the
sequences in leading rows for builds whose attention takes [rows, width] steps only).

`requests` / `pending` list the decoding sequences in the order they joined, `order` their rows.
A speculative round for a lone sequence runs on a one-row state over its row (`state`). A
prefilled prompt's columns, which no later step of its row overwrites, are copied out for the
prefix cache a piece a step (`KeptCopy`).
"""

from __future__ import annotations

import numpy as np

from mlpdeploy.runtime.scheduler.request import Request
from mlpdeploy.runtime.step import Stepper, StepState


class Rows:
    """Fixed cache rows, the sequences decoding in them and the token each feeds next."""

    def __init__(self, stepper: Stepper, rows: int, columns: int):
        self.stepper, self.rows = stepper, rows
        self.buffers = stepper.cache_buffers(rows, columns)
        self.column_bytes = sum(b[0, :, 0].nbytes for b in self.buffers.values())  # one row's column, every buffer
        self.batch = stepper.rows_state(self.buffers, np.zeros(rows, np.int64))
        self.batch.reuse_logits = True  # the scheduler uses a step's logits before its next step
        self.order: list[int] = []  # the decoding sequences' rows
        self.requests: list[Request] = []
        self.pending: list[int] = []
        self._free = list(range(rows - 1, -1, -1))  # pop() gives the lowest free row
        self._sole: tuple[int, StepState] | None = None

    @property
    def active(self) -> int:
        return len(self.requests)

    def take(self) -> int:
        """A free row for a prompt to prefill into (the caller admitted no more than `rows` sequences)."""
        return self._free.pop()

    def release(self, row: int) -> None:
        """Give a row back (its sequence ended, or its prefill stopped): its length drops to 0."""
        self.batch.positions[row] = 0
        self._free.append(row)

    def join(self, request: Request, row: int, pending: int) -> None:
        """`request`, prefilled into `row`, decodes from the next step on, feeding `pending` first."""
        self.order.append(row)
        self.requests.append(request)
        self.pending.append(pending)

    def leave(self, request: Request, piece_bytes: int | None = None) -> None:
        """Remove `request` and free its row at once (`piece_bytes`: as `Slots.leave` takes it; nothing moves here)."""
        index = self.requests.index(request)
        row = self.order.pop(index)
        self.requests.pop(index)
        self.pending.pop(index)
        self.release(row)

    def clear(self) -> list[Request]:
        """Drop every sequence and free every row (after a failed step); returns the decoding ones."""
        requests = self.requests
        self.order, self.requests, self.pending, self._sole = [], [], [], None
        self.batch.positions[:] = 0
        self.batch.length = 0
        self._free = list(range(self.rows - 1, -1, -1))
        return requests

    def copy_in(self, row: int, kept: dict[str, np.ndarray], columns: int) -> None:
        """Columns 0..columns-1 of one-row cache arrays `kept` into `row`, its length set to `columns`."""
        for name, buffer in self.buffers.items():
            buffer[row, :, :columns] = kept[name][0, :, :columns]
        self.batch.positions[row] = columns

    def step(self, chunks: list[tuple[int, list[int]]], finishing: int) -> tuple[np.ndarray, np.ndarray]:
        """One ragged step: `chunks` (row, prompt tokens), the last `finishing` of them ending their prompts,
        then every decoding row's pending token. Returns the logits of the finishing chunks' last tokens
        [finishing, vocab] and of the decoding rows [active, vocab] (the step keeps only the logits from the
        first finishing chunk's last token on)."""
        segments = chunks + [(row, [token]) for row, token in zip(self.order, self.pending)]
        ends = np.cumsum([len(tokens) for _, tokens in chunks], dtype=np.int64) - 1
        total = int(ends[-1]) + 1 + self.active if len(chunks) else self.active
        wanted = ends[len(chunks) - finishing:]
        first = int(wanted[0]) if finishing else total - self.active
        logits = self.stepper.step_segments(self.batch, segments, total - first)
        return logits[wanted - first], logits[len(logits) - self.active:]

    def state(self) -> StepState:
        """For a speculative round of the lone decoding sequence (`drafting.SoloDrafting`, as it takes `Slots.state`):
        a one-row state over its row (views: its steps write the row in place), its length taken from the
        batch; `sync` folds it back."""
        row = self.order[0]
        if self._sole is None or self._sole[0] != row:
            views = {name: buffer[row: row + 1] for name, buffer in self.buffers.items()}
            self._sole = (row, self.stepper.rows_state(views, self.batch.positions[row: row + 1]))
        state = self._sole[1]
        state.positions[0] = self.batch.positions[row]
        state.length = int(state.positions[0])
        return state

    def sync(self) -> None:
        """Fold the one-row state's length (a speculative round moved it) back into the batch."""
        if self._sole is not None:
            row, state = self._sole
            self.batch.positions[row] = state.positions[0]
            self.batch.length = int(self.batch.positions.max(initial=0))


class KeptCopy:
    """A prefilled prompt's columns copied out of its row into one-row arrays for the prefix cache, at most
    `piece_bytes` a step (a 1,000-token SmolLM2 prompt is 46 MB: ~25 ms at once). The row's sequence must
    still hold it: the copy is dropped when the sequence leaves first."""

    def __init__(self, rows: Rows, request: Request, row: int):
        self.request, self.row, self.length = request, row, len(request.prompt)
        self.buffers = rows.stepper.cache_buffers(1, self.length)
        self.copied = 0

    def advance(self, rows: Rows, piece_bytes: int) -> bool:
        """Copy the next piece; True once every column is copied."""
        end = min(self.length, self.copied + max(1, piece_bytes // rows.column_bytes))
        for name, buffer in rows.buffers.items():
            self.buffers[name][0, :, self.copied:end] = buffer[self.row, :, self.copied:end]
        self.copied = end
        return end == self.length
