"""Build and load mlpdeploy's ONNX Runtime custom-op library (compiled CPU kernels, opt-in).

ONNX Runtime's CPU provider cannot fuse a chain of elementwise ops, so GroupRational's portable
function body (≈ 25 elementwise passes) runs far slower than one memory pass. This library
gives ONNX Runtime a one-pass CPU kernel for `mlpdeploy::GroupRational` (float32) through its
custom-op route, `SessionOptions.register_custom_ops_library`. A registered custom op takes
precedence over the model-local function of the same name, so the same model runs the kernel
when the library is registered and the portable body when it is not.

The sources live in this repository (ort/ort_abi.h: the few C API declarations it needs, by
slot number, written for mlpdeploy; ort/ort_library.c; <op>/ort_kernel.c) and are compiled here
with the system C compiler ($CC, else cc, gcc, clang) into a cache directory keyed by the
sources' digest, the compiler flags and the onnxruntime version. Loading checks the ABI twice:
here, the onnxruntime package version and the library's ABI tag; in C, the runtime's version
string (1.x) and that it serves API version 13.

    python -m mlpdeploy.plugins.ort.library [--output DIR]     (also `make ort-kernels`)
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mlpdeploy.errors import MlpdeployError

HERE = Path(__file__).resolve().parent
PLUGINS = HERE.parent
SOURCES = (HERE / "ort_abi.h", HERE / "ort_library.c", PLUGINS / "group_rational" / "ort_kernel.c", PLUGINS / "sparse_mlp" / "ort_kernel.c",
           PLUGINS / "matmul_nbits" / "ort_kernel.c", PLUGINS / "cached_attention" / "ort_kernel.c")
LIBRARY_NAME = "libmlpdeploy_ort.so"
ABI_TAG = "mlpdeploy-ort-abi-1 api13 customop13"
MIN_ONNXRUNTIME = (1, 13)
KERNEL_OPS = {"GroupRational": ("float32",), "SparseMLP": ("float32",), "MatMulInt4": ("float32",), "MatMulInt8": ("float32",),
              "CachedAttention": ("float32",)}  # op type -> the dtypes the library computes
DEFAULT_CFLAGS = ("-O3", "-march=native", "-std=c11", "-fPIC", "-pthread", "-Wall")
COMPILERS = ("cc", "gcc", "clang")


def find_compiler() -> str:
    """$CC or the first of cc, gcc, clang on PATH, else a one-line error."""
    candidates = [os.environ["CC"]] if os.environ.get("CC") else list(COMPILERS)
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    raise MlpdeployError(
        f"no C compiler found (looked for {', '.join(candidates)}) to build mlpdeploy's ONNX Runtime CPU kernels: "
        "install one (e.g. apt-get install gcc) or build without --ort-kernels (the portable function bodies need none)"
    )


def cflags() -> list[str]:
    """DEFAULT_CFLAGS, or $MLPDEPLOY_ORT_CFLAGS (space-separated) instead."""
    override = os.environ.get("MLPDEPLOY_ORT_CFLAGS")
    return override.split() if override else list(DEFAULT_CFLAGS)


def onnxruntime_version() -> tuple[int, int]:
    import onnxruntime

    numbers = [int(n) for n in re.findall(r"\d+", onnxruntime.__version__)[:2]]
    return numbers[0], numbers[1]


def check_onnxruntime() -> None:
    """A one-line error unless the installed onnxruntime speaks the C API the library was written for."""
    import onnxruntime

    major, minor = onnxruntime_version()
    if major != 1 or (major, minor) < MIN_ONNXRUNTIME:
        raise MlpdeployError(
            f"mlpdeploy's ONNX Runtime CPU kernels need onnxruntime 1.x >= {'.'.join(map(str, MIN_ONNXRUNTIME))} "
            f"(C API version 13), found {onnxruntime.__version__}; build without --ort-kernels"
        )


def digest(compiler: str, flags: list[str]) -> str:
    """What the library in a cache directory was built from: sources, compiler, flags, onnxruntime version."""
    h = hashlib.sha256()
    for path in SOURCES:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(" ".join([compiler, *flags, ".".join(map(str, onnxruntime_version()))]).encode())
    return h.hexdigest()[:16]


def build_library(directory: Path | str) -> Path:
    """Compile the library into `directory/<digest>/` (once; reused while nothing changed), atomically.

    A missing compiler or a failing compile is a one-line MlpdeployError.
    """
    check_onnxruntime()
    compiler, flags = find_compiler(), cflags()
    target = Path(directory).expanduser() / digest(compiler, flags) / LIBRARY_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / LIBRARY_NAME
        command = [compiler, *flags, "-shared", "-o", str(out), *(str(p) for p in SOURCES if p.suffix == ".c"), "-lm"]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            first = next((line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip()[:200])
            raise MlpdeployError(f"compiling mlpdeploy's ONNX Runtime CPU kernels failed ({Path(compiler).name}): {first}")
        os.replace(out, target)
    return target


def check_library(path: Path | str) -> None:
    """A one-line error unless `path` is an mlpdeploy kernel library built for this ABI."""
    path = Path(path)
    if not path.is_file():
        raise MlpdeployError(f"mlpdeploy's ONNX Runtime kernel library {path} does not exist; rebuild with --ort-kernels")
    try:
        lib = ctypes.CDLL(str(path))
        lib.mlpdeploy_ort_abi.restype = ctypes.c_char_p
        tag = lib.mlpdeploy_ort_abi().decode()
    except (OSError, AttributeError) as exc:
        raise MlpdeployError(f"{path} is not an mlpdeploy ONNX Runtime kernel library: {exc}") from None
    if tag != ABI_TAG:
        raise MlpdeployError(f"{path} was built for ABI {tag!r}, this mlpdeploy expects {ABI_TAG!r}; rebuild with --ort-kernels")


def register(options, path: Path | str) -> None:
    """Register the library with an onnxruntime.SessionOptions after both ABI checks."""
    check_onnxruntime()
    check_library(path)
    options.register_custom_ops_library(str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlpdeploy.plugins.ort.library", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("build/ort-kernels"), help="cache directory (default build/ort-kernels)")
    args = parser.parse_args(argv)
    try:
        path = build_library(args.output)
    except MlpdeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
