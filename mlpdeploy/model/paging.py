"""Hand a torch model's memory-mapped weights back to the system between uses.

Hugging Face models load their safetensors weights as views of a memory-mapped file: a weight
becomes resident when something reads it (an export, a forward pass) and stays resident while
the model lives. `release_weights(module)` drops those resident pages again, so a compile
holds the torch model (1× the weights) only while it runs it, not while ONNX Runtime builds or
runs the exported copy. The next read faults the pages back in from the file (the page cache,
usually): nothing changes but where the bytes are.

Only mappings that are still exactly the file's bytes are released: a private file mapping
whose pages were never written (`Anonymous: 0 kB` in /proc/self/smaps — a written page becomes
an anonymous copy, and dropping it would lose the write). Everything else (weights in ordinary
memory, a zoo model, a quantized copy) is left as it is. Linux only; elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import mmap
from dataclasses import dataclass
from pathlib import Path

import torch

_SMAPS = Path("/proc/self/smaps")
_MADV_DONTNEED = 4


@dataclass
class _Mapping:
    start: int
    end: int
    path: str
    rss_kib: int = 0
    anonymous_kib: int = 0


def _file_mappings() -> list[_Mapping]:
    """This process's file-backed mappings with their resident and anonymous sizes."""
    try:
        text = _SMAPS.read_text()
    except OSError:
        return []
    mappings, current = [], None
    for line in text.splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            start, end = (int(x, 16) for x in head[0].split("-"))
            path = head[5].strip() if len(head) == 6 else ""
            current = _Mapping(start, end, path) if path.startswith("/") else None
            if current is not None:
                mappings.append(current)
        elif current is not None and head:
            if head[0] == "Rss:":
                current.rss_kib = int(head[1])
            elif head[0] == "Anonymous:":
                current.anonymous_kib = int(head[1])
    return mappings


def _tensors(module: torch.nn.Module):
    yield from module.parameters()
    yield from module.buffers()


def release_weights(module: torch.nn.Module) -> int:
    """Drop the resident pages of the unmodified file mappings that hold `module`'s weights;
    returns the bytes released (0 where nothing is memory-mapped, or off Linux)."""
    mappings = [m for m in _file_mappings() if m.rss_kib and not m.anonymous_kib]
    if not mappings:
        return 0
    pointers = sorted({t.untyped_storage().data_ptr() for t in _tensors(module) if t.device.type == "cpu" and t.numel()})
    hit = [m for m in mappings if any(m.start <= p < m.end for p in pointers)]
    madvise = ctypes.CDLL(None, use_errno=True).madvise
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = 0
    for mapping in hit:
        start = mapping.start - mapping.start % mmap.PAGESIZE
        if madvise(start, mapping.end - start, _MADV_DONTNEED) == 0:
            released += mapping.rss_kib * 1024
    return released
