"""The physical limit of this machine: memory bandwidth (STREAM-style copy and triad) and peak matmul rate.

    python bench/roofline.py [--threads 2] [--mib 256] [--json PATH]

Copy `a = b` and triad `a = b + s·c` run through torch's CPU kernels on `--threads` threads over
arrays of `--mib` MiB each (far beyond the caches); bytes counted the STREAM way (copy 2 arrays,
triad 3 per element; write-allocate traffic not counted). Best of several repeats, as STREAM
reports. Peak matmul: fp32 `torch.mm` at 2048³, best of several. Batch-1 decoders are bound by
the bandwidth: bytes moved per token / time per token, over the triad figure, is the fraction of
the limit a decoder reaches (bench/decode.py prints it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results  # noqa: E402


def _best_seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_roofline(threads: int = 2, mib: int = 256, repeats: int = 10) -> dict:
    """{"copy_gb_s", "triad_gb_s", "matmul_gflop_s", settings}: decimal GB/s and GFLOP/s."""
    import torch

    torch.set_num_threads(threads)
    n = mib * 2**20 // 4
    a, b, c = (torch.rand(n) for _ in range(3))
    copy = _best_seconds(lambda: a.copy_(b), repeats)
    triad = _best_seconds(lambda: torch.add(b, c, alpha=3.0, out=a), repeats)
    size = 2048
    x, y = torch.rand(size, size), torch.rand(size, size)
    mm = _best_seconds(lambda: torch.mm(x, y), max(3, repeats // 2))
    return {
        "threads": threads, "array_mib": mib,
        "copy_gb_s": 2 * 4 * n / copy / 1e9,
        "triad_gb_s": 3 * 4 * n / triad / 1e9,
        "matmul_gflop_s": 2 * size**3 / mm / 1e9,
    }


def bandwidth_fraction(bytes_per_token: float, ms_per_token: float, roofline: dict) -> float:
    """Bytes a token moves per second over the machine's triad bandwidth."""
    return bytes_per_token / (ms_per_token / 1e3) / (roofline["triad_gb_s"] * 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = measure_roofline(args.threads, args.mib)
    print(f"{args.threads} threads, {args.mib} MiB arrays: copy {result['copy_gb_s']:.1f} GB/s, triad {result['triad_gb_s']:.1f} GB/s, "
          f"fp32 matmul {result['matmul_gflop_s']:.0f} GFLOP/s")
    print(f"wrote {write_results('roofline', result, args.json)}")


if __name__ == "__main__":
    main()
