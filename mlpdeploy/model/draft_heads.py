"""Medusa-style draft heads on a causal LM's last hidden state: the torch module, where it reads
the model, and the file `analyze --draft-heads` writes (`plan.draft-heads.safetensors`).

At every position, with h the lm_head's input (the last hidden state, after the final norm):

    z_j = h + SiLU(h · W_jᵀ + b_j)            one residual SiLU block per head (Medusa's design)
    draft_logits_j = z_j · W_lm[ids]ᵀ          the model's own lm_head rows for the token slice `ids`

head j scoring the token j + 1 places after the one the lm_head predicts there (head 0: the token
after next). The blocks of all heads are one Linear `proj` [H·d ← d]; the lm_head slice is one
Linear `lm_head` [V' ← d] all heads share (the rows are the model's, never trained): so a graph
multiplies by each weight once per step, for every head at once.

The file holds `proj.weight` [H·d, d], `proj.bias` [H·d] (float32), `token_ids` [V'] (int64, the
slice: sorted token ids; every id for the whole vocabulary) and `lm_head.sha256` [32] (uint8, the
SHA-256 of the float32 rows W_lm[ids]), which ties the heads to the model they were trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import ModelBundle, share_tree
from mlpdeploy.model.torch_run import flatten_outputs

OUTPUT_PREFIX = "draft_logits."  # graph outputs draft_logits.{j} (docs/decoding.md)
MODULE = "draft_heads"  # the heads' module path in the reference (draft_heads.proj, draft_heads.lm_head)


def output_names(heads: int) -> list[str]:
    return [f"{OUTPUT_PREFIX}{j}" for j in range(heads)]


def find_lm_head(module: nn.Module, vocab: int | None = None) -> tuple[str, nn.Linear]:
    """The model's lm_head: the nn.Linear named `lm_head` (any prefix), else the last nn.Linear
    scoring `vocab` tokens; a one-line error when there is none (not a causal LM)."""
    linears = [(p, m) for p, m in module.named_modules() if isinstance(m, nn.Linear)]
    named = [(p, m) for p, m in linears if p.split(".")[-1] == "lm_head" and (vocab is None or m.out_features == vocab)]
    scoring = [(p, m) for p, m in linears if vocab is not None and m.out_features == vocab]
    found = named or scoring[-1:]
    if not found:
        raise MlpdeployError("the model has no lm_head (an nn.Linear scoring the vocabulary): draft heads need a causal language model")
    return found[-1]


def rows_sha256(rows: np.ndarray) -> np.ndarray:
    """The fingerprint of lm_head rows [V', d]: SHA-256 of their float32 bytes, as 32 uint8."""
    digest = hashlib.sha256(np.ascontiguousarray(rows, dtype=np.float32).tobytes()).digest()
    return np.frombuffer(digest, np.uint8).copy()


def lm_rows(lm_head: nn.Linear, token_ids: np.ndarray) -> np.ndarray:
    """The lm_head's rows [V', d] for `token_ids`, float32."""
    return lm_head.weight.detach().float().numpy()[np.asarray(token_ids, np.int64)]


@dataclass
class HeadsFile:
    """What a draft-heads file holds, checked (`read`)."""

    proj_weight: np.ndarray  # [H·d, d]
    proj_bias: np.ndarray  # [H·d]
    token_ids: np.ndarray  # [V'] sorted
    sha256: np.ndarray  # [32]

    @property
    def hidden(self) -> int:
        return int(self.proj_weight.shape[1])

    @property
    def heads(self) -> int:
        return int(self.proj_weight.shape[0]) // self.hidden

    def arrays(self) -> dict[str, np.ndarray]:
        return {"proj.weight": self.proj_weight, "proj.bias": self.proj_bias, "token_ids": self.token_ids, "lm_head.sha256": self.sha256}

    def whole_vocabulary(self, vocab: int) -> bool:
        return len(self.token_ids) == vocab and bool((self.token_ids == np.arange(vocab)).all())

    def check_rows(self, rows: np.ndarray, where: str) -> None:
        """A one-line error when `rows` (the lm_head rows of the model at hand) are not the ones the heads were trained on."""
        if rows.shape[1] != self.hidden or not np.array_equal(rows_sha256(rows), self.sha256):
            raise MlpdeployError(f"the draft heads in {where} were trained on another model (its lm_head differs from this model's); "
                                 "train them on this model with `mlpdeploy analyze MODEL --data FILE --draft-heads N -o PLAN`")

    @classmethod
    def read(cls, path: Path | str) -> "HeadsFile":
        """The file at `path`, or a one-line error when it is missing or not a draft-heads file."""
        from safetensors.numpy import load_file

        path = Path(path)
        if not path.is_file():
            raise MlpdeployError(f"draft heads {path} do not exist; train them with `mlpdeploy analyze MODEL --data FILE --draft-heads N -o PLAN`")
        try:
            arrays = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise MlpdeployError(f"{path} is not a safetensors file ({type(exc).__name__}); give the plan's .draft-heads.safetensors") from None
        missing = sorted({"proj.weight", "proj.bias", "token_ids", "lm_head.sha256"} - set(arrays))
        weight = arrays.get("proj.weight")
        if missing or weight.ndim != 2 or weight.shape[0] % weight.shape[1] or arrays["proj.bias"].shape != (weight.shape[0],):
            raise MlpdeployError(f"{path} is not a draft-heads file ({'no ' + ', '.join(missing) if missing else 'bad shapes'}); "
                                 "give the plan's .draft-heads.safetensors")
        return cls(weight.astype(np.float32), arrays["proj.bias"].astype(np.float32), arrays["token_ids"].astype(np.int64),
                   arrays["lm_head.sha256"].astype(np.uint8))


class DraftHeads(nn.Module):
    """h [..., d] → draft logits [..., H, V'] (module docstring)."""

    def __init__(self, heads: int, rows: torch.Tensor, token_ids: np.ndarray):
        super().__init__()
        vocab, hidden = rows.shape
        self.heads, self.hidden = heads, hidden
        self.proj = nn.Linear(hidden, heads * hidden)
        nn.init.zeros_(self.proj.weight)  # Medusa's start: every head repeats the lm_head's own guess
        nn.init.zeros_(self.proj.bias)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        self.lm_head.weight.data.copy_(rows)
        self.lm_head.weight.requires_grad_(False)
        self.register_buffer("token_ids", torch.as_tensor(np.asarray(token_ids, np.int64)), persistent=False)

    def blocks(self, h: torch.Tensor) -> torch.Tensor:
        """z [..., H, d]: h through each head's residual SiLU block."""
        act = nn.functional.silu(self.proj(h)).unflatten(-1, (self.heads, self.hidden))
        return h.unsqueeze(-2) + act

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.blocks(h))

    def to_file(self, sha256: np.ndarray) -> HeadsFile:
        return HeadsFile(self.proj.weight.detach().float().numpy().copy(), self.proj.bias.detach().float().numpy().copy(),
                         self.token_ids.numpy().copy(), sha256)

    @classmethod
    def from_file(cls, file: HeadsFile, lm_head: nn.Linear, where: str) -> "DraftHeads":
        """The heads of `file` on the model whose lm_head is `lm_head` (checked to be the one they were trained on)."""
        rows = lm_rows(lm_head, file.token_ids)
        file.check_rows(rows, where)
        heads = cls(file.heads, torch.from_numpy(rows), file.token_ids)
        with torch.no_grad():
            heads.proj.weight.copy_(torch.from_numpy(file.proj_weight))
            heads.proj.bias.copy_(torch.from_numpy(file.proj_bias))
        return heads.eval()


class WithDraftHeads(nn.Module):
    """A model whose outputs are followed by its draft heads' (draft_logits.0 … H−1, each [..., V']),
    computed from what its lm_head reads. Paths stay the model's (`layers.3.mlp`), the heads'
    are `draft_heads.proj` and `draft_heads.lm_head`: the torch reference of a graph the
    `draft-heads` pass built them into."""

    def __init__(self, inner: nn.Module, heads: DraftHeads, lm_head_path: str):
        super().__init__()
        object.__setattr__(self, "inner", inner)  # not a submodule: paths stay the model's
        share_tree(self, inner)
        self.draft_heads = heads
        self.lm_head_path = lm_head_path

    def forward(self, *args):
        captured = []
        lm_head = self.get_submodule(self.lm_head_path)
        # first in line: the heads read the lm_head's input as the model computed it (not as an
        # int8-activation hook of a quantized reference hands it on)
        handle = lm_head.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]), prepend=True)
        try:
            outputs = flatten_outputs(self.inner(*args))
        finally:
            handle.remove()
        if len(captured) != 1:
            raise MlpdeployError(f"the model ran its lm_head {len(captured)} times in one forward; draft heads need exactly one")
        return (*outputs, *self.draft_heads(captured[0]).unbind(-2))


def attach_draft_heads(bundle: ModelBundle, file: HeadsFile, where: str) -> ModelBundle:
    """`bundle` whose module also outputs the heads of `file` (`WithDraftHeads`), named draft_logits.{j}."""
    vocab = next((int(s.high) for s in bundle.inputs if s.name == "input_ids" and s.high is not None), None)
    path, lm_head = find_lm_head(bundle.module, vocab)
    module = WithDraftHeads(bundle.module, DraftHeads.from_file(file, lm_head, where), path)
    module.eval()
    names = bundle.output_names or ["logits"]
    return dataclasses.replace(bundle, module=module, output_names=[*names, *output_names(file.heads)])


def heads_reference(bundle: ModelBundle, entry: dict | None, beside: Path | None) -> ModelBundle:
    """The torch reference of a graph whose manifest lists draft heads (`entry`, the manifest's
    `draft_heads`): `bundle` with those heads attached, their file found beside the artifact
    (`beside`, where compile copies the plan's files) or where the rewrite read it. `bundle` as it
    is when there are none, or when it has them already."""
    if not entry or any(n.startswith(OUTPUT_PREFIX) for n in bundle.output_names):
        return bundle
    recorded = Path(entry.get("weights") or "")
    candidates = ([beside / recorded.name] if beside is not None and recorded.name else []) + [recorded]
    found = next((p for p in candidates if p.name and p.is_file()), None)
    if found is None:
        raise MlpdeployError(f"the artifact has draft heads, but their file {recorded.name or '(unnamed)'} is neither beside it nor at "
                             f"{recorded}; put the plan's .draft-heads.safetensors beside the artifact to validate them")
    return attach_draft_heads(bundle, HeadsFile.read(found), str(found))
