"""A torch model whose MLPs compute only selected neurons: what a `sparse-mlp` graph computes.

`SparseSite` says, for one MLP, how its neurons are picked per token (row), exactly as
`mlpdeploy::SparseMLP` picks them (plugins/sparse_mlp/reference.py):
- `topk`: the k best scores of the low-rank predictor `(x·P_a)·P_b` on the MLP's input x (the
  input of its up projection);
- `threshold`: |act(gate)| > t on the gate projection's output (CATS).
`sparsified(module, sites)` zeroes, while it is active, the down projection's input outside each
row's selection: the same function as the op (the op skips those neurons; here they are computed
and zeroed). Sites travel in a manifest as JSON (`to_json`/`from_json`, weights as base64 float32),
where validation applies them to its torch reference (mlpdeploy.model.overrides).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.plugins.sparse_mlp.reference import activate, threshold_mask, topk_mask

KIND = "sparse-mlp"


def encode_array(array: np.ndarray) -> dict:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return {"shape": list(array.shape), "float32_base64": base64.b64encode(array.tobytes()).decode()}


def decode_array(data: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data["float32_base64"]), dtype=np.float32).reshape(data["shape"]).copy()


def svd_predictor(w_up: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(P_a [d, r], P_b [r, h]) with P_a·P_b the best rank-r approximation of W_upᵀ (w_up: [h, d])."""
    u, s, vt = np.linalg.svd(np.asarray(w_up, dtype=np.float64).T, full_matrices=False)
    r = max(1, min(rank, len(s)))
    root = np.sqrt(s[:r])
    return (u[:, :r] * root).astype(np.float32), (root[:, None] * vt[:r]).astype(np.float32)


@dataclass
class SparseSite:
    """How one MLP picks its neurons. `up`: the module whose input is the MLP input (topk) or whose
    output is the gate (threshold); `down`: the down projection, whose input gets masked."""

    mode: str
    up: str
    down: str
    k: int | None = None
    p_a: np.ndarray | None = None  # [d, r]
    p_b: np.ndarray | None = None  # [r, h]
    threshold: np.ndarray | None = None  # [1] or [h]
    activation: str = "silu"  # the gate's activation (threshold mode)

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The 0/1 selection [..., h] for `x` (the up module's input in topk mode, its output in threshold mode)."""
        flat = x.reshape(-1, x.shape[-1]).float()
        if self.mode == "topk":
            m = topk_mask(flat, torch.from_numpy(self.p_a), torch.from_numpy(self.p_b), int(self.k))
        else:
            m = threshold_mask(activate(flat, self.activation), torch.from_numpy(self.threshold))
        return m.reshape(*x.shape[:-1], m.shape[-1]).to(x.dtype)

    def to_json(self) -> dict:
        data = {"kind": KIND, "mode": self.mode, "up": self.up, "down": self.down, "activation": self.activation}
        if self.mode == "topk":
            data |= {"k": int(self.k), "p_a": encode_array(self.p_a), "p_b": encode_array(self.p_b)}
        else:
            data |= {"threshold": encode_array(self.threshold)}
        return data

    @classmethod
    def from_json(cls, data: dict) -> SparseSite:
        arrays = {k: decode_array(data[k]) for k in ("p_a", "p_b", "threshold") if k in data}
        return cls(data["mode"], data["up"], data["down"], k=data.get("k"), activation=data.get("activation", "silu"), **arrays)

    def describe(self) -> str:
        if self.mode == "topk":
            return f"sparse-mlp topk k={self.k}/{self.p_b.shape[1]} (predictor rank {self.p_a.shape[1]})"
        t = self.threshold
        return f"sparse-mlp |{self.activation}(gate)| > {f'{float(t[0]):.4g}' if t.size == 1 else f'per-neuron thresholds ({t.size})'}"


@contextlib.contextmanager
def sparsified(module: torch.nn.Module, sites: list[SparseSite]) -> Iterator[None]:
    """Inside the block, each site's down projection sees only its rows' selected neurons."""
    modules = dict(module.named_modules())
    missing = sorted({p for s in sites for p in (s.up, s.down)} - set(modules))
    if missing:
        raise MlpdeployError(f"the model has no module {missing[0]!r} to sparsify; was the graph rewritten from another model?")
    handles = []
    for site in sites:
        state: dict[str, torch.Tensor] = {}

        def on_up(_module, args, output, site=site, state=state):
            state["mask"] = site.mask(args[0] if site.mode == "topk" else output)

        def on_down(_module, args, state=state):
            mask = state.pop("mask", None)
            if mask is None or mask.shape != args[0].shape:
                raise MlpdeployError("a sparsified MLP's down projection ran without its up projection's selection")
            return (args[0] * mask, *args[1:])

        handles.append(modules[site.up].register_forward_hook(on_up))
        handles.append(modules[site.down].register_forward_pre_hook(on_down, prepend=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
