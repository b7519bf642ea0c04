"""`heads[:k=N]`: Medusa-style draft heads read from the model's own extra outputs.

The contract a graph meets (docs/decoding.md): besides `logits`, outputs `draft_logits.{j}` for
j = 0 … H−1, float32 [batch, seq, V_j]: at each input position, head j's scores for the token j+1
places after the one `logits` predicts there (head 0: the token after next). V_j is the
model's vocabulary, or a slice of it when the manifest's `draft_heads.token_ids` lists which
token each of the V_j scores is for (the same slice for every head). Drafting costs nothing
beyond the heads inside the step: after each step the heads' outputs at the column whose logits
gave the last emitted token are the next round's drafts.
"""

from __future__ import annotations

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.sampling import draw
from mlpdeploy.runtime.speculative.base import Drafter, DraftRun, Drafts, Verified
from mlpdeploy.runtime.step import DRAFT_OUTPUT


def head_outputs(engine: Engine) -> list[str]:
    """The artifact's draft-head outputs in head order (`draft_logits.0`, `draft_logits.1`, …)."""
    names = [n for n in engine.output_names if n.startswith(DRAFT_OUTPUT)]
    indices = sorted(int(n[len(DRAFT_OUTPUT):]) for n in names if n[len(DRAFT_OUTPUT):].isdigit())
    if indices != list(range(len(names))):
        raise MlpdeployError(f"{engine.path}: draft-head outputs {sorted(names)} are not draft_logits.0 … draft_logits.{len(names) - 1}")
    return [f"{DRAFT_OUTPUT}{j}" for j in indices]


class HeadsDrafter(Drafter):
    name = "heads"

    def __init__(self, engine: Engine, k: int | None = None):
        self.outputs = head_outputs(engine)
        if not self.outputs:
            raise MlpdeployError(f"{engine.path} has no draft heads (outputs draft_logits.0 …); train them with "
                                 "`mlpdeploy analyze MODEL --data FILE --draft-heads N` and compile with the plan")
        if k is not None and not 1 <= k <= len(self.outputs):
            raise MlpdeployError(f"--speculative heads:k={k}: the artifact has {len(self.outputs)} draft heads; choose k from 1 to {len(self.outputs)}")
        self.k_max = k or len(self.outputs)
        info = getattr(engine.manifest, "draft_heads", None) or {}
        ids = info.get("token_ids")
        self.token_ids = np.asarray(ids, np.int64) if ids is not None else None
        self.vocab = engine.session.get_outputs()[engine.output_names.index("logits")].shape[-1]

    def describe(self) -> str:
        return f"heads:k={self.k_max}"

    def start(self, prompts, capacity, sampling, rng) -> "HeadsRun":
        return HeadsRun(self, len(prompts), sampling, rng)


class HeadsRun(DraftRun):
    def __init__(self, drafter: HeadsDrafter, batch: int, sampling, rng):
        self.drafter, self.sampling, self.rng = drafter, sampling, rng
        self.scores: list[np.ndarray | None] = [None] * batch  # per row [heads, V'] at its last emitted token

    def observe(self, verified: Verified) -> None:
        heads = [verified.outputs[name] for name in self.drafter.outputs[: self.drafter.k_max]]
        for row, column in enumerate(verified.column):
            if verified.emitted[row]:
                self.scores[row] = np.stack([h[row, column] for h in heads])

    def propose(self, limits: list[int]) -> Drafts:
        tokens, probs = [], [] if not self.sampling.greedy else None
        for row, limit in enumerate(limits):
            scores = self.scores[row]
            if not limit or scores is None:
                tokens.append([])
                if probs is not None:
                    probs.append(None)
                continue
            scores = scores[:limit]
            if probs is None:
                picked = scores.argmax(-1)
            else:
                q = self.sampling.probs(scores)
                picked = np.array([draw(p, self.rng) for p in q])
                probs.append(self._full(q))
            tokens.append([int(t) for t in (self.drafter.token_ids[picked] if self.drafter.token_ids is not None else picked)])
        return Drafts(tokens, probs)

    def _full(self, q: np.ndarray) -> np.ndarray:
        """Distributions over a slice of the vocabulary spread onto the whole vocabulary."""
        ids = self.drafter.token_ids
        if ids is None:
            return q
        full = np.zeros((q.shape[0], self.drafter.vocab))
        full[:, ids] = q
        return full
