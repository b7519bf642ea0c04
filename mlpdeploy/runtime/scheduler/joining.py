"""A prefilled prompt's cache going into its batch row: whole, or a piece a step while others decode.

A prompt is prefilled in buffers of its own (`prefill.py`); once done, its columns are copied into
the next free row of the batch's cache (`Slots`). For a long prompt that copy is large (SmolLM2-135M:
46 KB a token; 1,000 tokens took 25 ms, the row's pages mapped as they are first written), and
done at once it would stall every decoding row on top of the prompt's last chunk. So while other
rows decode, the copy goes `step_bytes` at a time, one piece per scheduler iteration beside their
decode step (the row is not bound to a step until it joins), the first piece in the iteration
after the prompt's last chunk; with no row decoding, or a prompt that fits one piece, it goes
whole, at once, right after that chunk. The request emitted its first token when its prefill
ended; its next waits for the join.
"""

from __future__ import annotations

import numpy as np

from mlpdeploy.runtime.scheduler.request import Request
from mlpdeploy.runtime.scheduler.slots import Slots


class Joining:
    """`request`, prefilled into `buffers` (`length` tokens), `token` its next input, on its way into a row."""

    def __init__(self, request: Request, buffers: dict[str, np.ndarray], length: int, token: int):
        self.request, self.buffers, self.length, self.token = request, buffers, length, token
        self.staged = 0  # columns copied into `row` so far
        self.row: int | None = None

    def whole(self, slots: Slots, step_bytes: int) -> bool:
        """Whether the copy goes at once: no row decodes, or the prompt fits one piece."""
        return not slots.active or self.length <= self._piece(slots, step_bytes)

    def _piece(self, slots: Slots, step_bytes: int) -> int:
        return max(1, step_bytes // slots.column_bytes) if slots.active else self.length

    def advance(self, slots: Slots, step_bytes: int) -> bool:
        """Copy the next piece into the next free row, or the rest and join; True once joined. While a
        row moves into a hole (`Slots.leave`), nothing: the next free row is known once it is done."""
        if slots.moving is not None:
            return False
        if self.row != slots.active:  # a row left since the last piece: the next free row is another one now
            self.row, self.staged = slots.active, 0
        piece = self._piece(slots, step_bytes)
        if self.staged + piece >= self.length:
            slots.join(self.request, self.buffers, self.length, self.token, staged=self.staged)
            return True
        slots.stage(self.buffers, self.staged, self.staged + piece)
        self.staged += piece
        return False
