"""What every op's Triton launcher shares: the interpreter switch, tile rounding, lazy kernel import."""

from __future__ import annotations

import importlib
import os

from mlpdeploy.errors import require


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def pow2(v: int, floor: int = 1) -> int:
    """The smallest power of two ≥ v, at least `floor` (Triton block sizes are powers of two)."""
    return max(floor, 1 << max(0, v - 1).bit_length())


def load_kernels(package: str, purpose: str):
    """`<package>.triton_kernels`, importing triton first (a one-line error names the extra when missing)."""
    require("triton", "triton", purpose)
    return importlib.import_module(f"{package}.triton_kernels")


def kernel_device() -> str | None:
    """Where Triton kernels run here: "cpu" in the interpreter, "cuda" with a GPU, else None."""
    if interpreting():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else None
