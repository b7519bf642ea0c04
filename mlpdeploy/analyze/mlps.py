"""Find the MLPs of a torch model by their projections' names, the way frameworks name them.

An MLP is an up projection (or a gate and an up) and a down projection under one parent
module. Its scope is that parent (`layers.3.mlp` in LLaMA, `layers.3` in OPT, whose block
holds `fc1`/`fc2` itself, `layer.3` in BERT). Only `nn.Linear` projections are recognized.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# (up projection names, down projection name), relative to the MLP's scope; one line a family.
NAMINGS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("gate_proj", "up_proj"), "down_proj"),  # LLaMA, Mistral, Qwen2, Gemma
    (("gate_up_proj",), "down_proj"),  # Phi-3 (fused gate and up)
    (("fc1",), "fc2"),  # OPT, ViT, MLP-Mixer, gMLP, CLIP
    (("w1", "w3"), "w2"),  # Mixtral experts, the original LLaMA
    (("dense_h_to_4h",), "dense_4h_to_h"),  # GPT-NeoX, Falcon
    (("intermediate.dense",), "output.dense"),  # BERT family
    (("wi",), "wo"),  # T5
)
GATED_UP_NAMES = ("gate_proj", "gate_up_proj", "w1")


@dataclass(frozen=True)
class MLPSite:
    """One MLP: its scope, the module paths of its up (and gate) projections and of its down projection."""

    scope: str
    ups: tuple[str, ...]
    down: str
    hidden: int  # the down projection's input width

    @property
    def gated(self) -> bool:
        return any(p.rsplit(".", 1)[-1] in GATED_UP_NAMES for p in self.ups)

    @property
    def linears(self) -> tuple[str, ...]:
        return (*self.ups, self.down)


def _join(scope: str, name: str) -> str:
    return f"{scope}.{name}" if scope else name


def find_mlps(module: nn.Module) -> list[MLPSite]:
    """Every MLP in `module`, in module order."""
    linears = {path: m for path, m in module.named_modules() if isinstance(m, nn.Linear)}
    sites = []
    for path, down in linears.items():
        for ups, down_name in NAMINGS:
            if not (path == down_name or path.endswith("." + down_name)):
                continue
            scope = path[: -len(down_name)].rstrip(".")
            found = tuple(_join(scope, u) for u in ups if _join(scope, u) in linears)
            if found:
                sites.append(MLPSite(scope, found, path, down.in_features))
                break
    return sites
