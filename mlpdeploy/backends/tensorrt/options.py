"""The TensorRT backends' options (their fields declare their command-line options)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlpdeploy.backends.options import BuildOptions, option
from mlpdeploy.backends.tensorrt.profile import Triple, parse_shapes

RTX_TARGETS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")  # what TensorRT-RTX compiles for
SHAPES_HELP = "optimization profile for an input (input_ids=1x1:2x16:8x512) or a dim (seq=1:64:1024); see backends/tensorrt/profile.py."


def _shapes(values) -> dict[str, Triple]:
    return parse_shapes(values) if not isinstance(values, dict) else values


@dataclass
class RTXOptions(BuildOptions):
    """Options of `tensorrt-rtx` (builds ahead of time, no GPU needed)."""

    target: str | None = option(None, help=f"target GPU: {', '.join(RTX_TARGETS)} (default: portable).")
    shapes: dict[str, Triple] = option(factory=dict, multiple=True, parse=_shapes, metavar="NAME=MIN:OPT:MAX", help=SHAPES_HELP)


@dataclass
class TensorRTOptions(BuildOptions):
    """Options of `tensorrt` (datacenter TensorRT, builds on the GPU it targets)."""

    target: str | None = option(None, help="the GPU here (default), its smXY, or ampere+ for a hardware-compatible engine.")
    shapes: dict[str, Triple] = option(factory=dict, multiple=True, parse=_shapes, metavar="NAME=MIN:OPT:MAX", help=SHAPES_HELP)
    plugin_libraries: list[Path] = option(factory=list, flags=("--plugin-library",), multiple=True, path=True, parse=list, metavar="PATH",
                                          help="another TensorRT plugin library to load, for plugin nodes of other namespaces (repeatable).")
