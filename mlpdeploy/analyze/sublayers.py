"""Find the residual sublayers of a torch model by its module structure: blocks, their attention
and their MLPs, named the way `drop-layers` names them in the exported graph.

A *block* is a child of an nn.ModuleList (`layers.3`, `blocks.3`, `model.layers.3`,
`encoder.layer.3`) holding an attention or an MLP. Its *attention* is a child whose name has
`attn` or `attention` in it and that holds nn.Linear layers; its *MLPs* are found by their
projections' names (`mlps.find_mlps`). A sublayer's *site* (the plan's key) is the block's child
that computes its residual branch: `layers.3.self_attn`, `layers.3.mlp`, `layers.3.fc2` (OPT's
block holds its MLP linears itself), `encoder.layer.3.attention` / `encoder.layer.3.output`
(BERT). Its *output module* is the branch's last linear (`o_proj`, `down_proj`, BERT's
`attention.output.dense`): overriding it with zeros drops the sublayer (mlpdeploy.model.overrides),
exactly as the graph rewrite does; a dropped block gives back its input.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mlpdeploy.analyze.mlps import find_mlps
from mlpdeploy.model.overrides import IDENTITY, ZERO
from mlpdeploy.scopes import natural_key

ATTENTION_WORDS = ("attn", "attention")


@dataclass(frozen=True)
class Sublayer:
    """A droppable part: an attention or MLP sublayer of a block, or the block itself."""

    site: str
    kind: str  # "attention" | "mlp" | "block"
    block: str
    depth: int  # the block's index in its ModuleList
    output_module: str  # overridden to drop it: the branch's last linear, or the block
    first_module: str | None = None  # the branch's first linear: it reads the stream in a post-norm block

    @property
    def override(self) -> dict[str, str]:
        """The module override that drops it (see mlpdeploy.model.overrides)."""
        return {self.output_module: IDENTITY if self.kind == "block" else ZERO}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _child_of(block: str, path: str) -> str:
    """The block's child that `path` (a module inside the block) lies in."""
    return _join(block, path[len(block) + 1:].split(".", 1)[0])


def find_blocks(module: nn.Module) -> dict[str, int]:
    """Every ModuleList child (`layers.3`) → its index, in model order."""
    blocks = {}
    for path, child in module.named_modules():
        if isinstance(child, nn.ModuleList):
            for index, _ in enumerate(child):
                blocks[_join(path, str(index))] = index
    return blocks


def find_sublayers(module: nn.Module) -> list[Sublayer]:
    """Per block (in model order): its attention, its MLPs, then the block itself."""
    modules = dict(module.named_modules())
    linears = [p for p, m in modules.items() if isinstance(m, nn.Linear)]
    mlps = find_mlps(module)
    found: list[Sublayer] = []
    outer: list[str] = []
    for block, depth in sorted(find_blocks(module).items(), key=lambda kv: natural_key(kv[0])):
        if any(block.startswith(b + ".") for b in outer):
            continue  # a ModuleList inside a block (a mixture's experts) is part of that block
        inside = [p for p in linears if p.startswith(block + ".")]
        parts: list[Sublayer] = []
        for name, _ in modules[block].named_children():
            attn_linears = [p for p in inside if p.startswith(_join(block, name) + ".")]
            if any(w in name.lower() for w in ATTENTION_WORDS) and attn_linears:
                parts.append(Sublayer(_join(block, name), "attention", block, depth, attn_linears[-1], attn_linears[0]))
        for mlp in mlps:
            if mlp.down.startswith(block + ".") and not any(mlp.down.startswith(p.site + ".") for p in parts):
                parts.append(Sublayer(_child_of(block, mlp.down), "mlp", block, depth, mlp.down, mlp.ups[0]))
        if parts:
            outer.append(block)
            found.extend([*parts, Sublayer(block, "block", block, depth, block)])
    return found
