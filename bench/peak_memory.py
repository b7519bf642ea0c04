"""Peak memory of one benchmark variant, measured in a process of its own.

The suite times every variant in one process, round robin, so their memory cannot be told apart
there. `peak_mib(kind, target, feed)` runs this file as a child: it imports what the variant
needs, resets the kernel's peak-RSS mark (Linux: /proc/self/clear_refs), notes its resident
memory, loads the variant, runs it `runs` times on the feed and reports the new peak minus that
(MiB the model and its runs added: weights, arenas, activations; the imports' own transient peak
is not counted). Elsewhere it falls back to getrusage's peak, which may hide a small model under
the imports' peak. Kinds:

    onnx PATH      an ONNX model in an ONNX Runtime CPU session (bench/common.py cpu_session)
    engine DIR     an mlpdeploy artifact (mlpdeploy.runtime.engine.Engine)
    torch MODEL    a zoo/spec model in torch eager (mlpdeploy.model.load_model)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def peak_mib(kind: str, target: str | Path, feed_path: Path, threads: int, runs: int = 3) -> float | None:
    """MiB the variant added at its peak, or None (with a printed reason) when the child failed."""
    cmd = [sys.executable, str(Path(__file__)), kind, str(target), str(feed_path), str(threads), str(runs)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    if done.returncode != 0:
        print(f"peak memory of {kind} {target}: child failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["added_mib"]


def _loader(kind: str, target: str, threads: int):
    if kind == "onnx":
        sys.path.insert(0, str(HERE))
        import onnxruntime  # noqa: F401 - imported before the peak mark is reset
        from common import cpu_session

        def load():
            session = cpu_session(target, threads)
            return lambda feed: session.run(None, feed)
        return load
    if kind == "engine":
        import onnxruntime  # noqa: F401 - imported before the peak mark is reset

        from mlpdeploy.runtime.engine import Engine

        def load():
            engine = Engine.load(target, threads=threads)
            return lambda feed: engine.session.run(None, feed)
        return load
    if kind == "torch":
        import torch

        import mlpdeploy.zoo  # noqa: F401 - imported before the peak mark is reset
        from mlpdeploy.model import load_model

        torch.set_num_threads(threads)

        def load():
            bundle = load_model(target)
            module, order = bundle.module.eval(), [s.name for s in bundle.inputs]

            def run(feed):
                with torch.no_grad():
                    return module(*(torch.from_numpy(feed[n]) for n in order))
            return run
        return load
    raise SystemExit(f"unknown kind {kind!r}: onnx, engine or torch")


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    import resource

    kind, target, feed_path, threads, runs = argv[0], argv[1], Path(argv[2]), int(argv[3]), int(argv[4])
    load = _loader(kind, target, threads)
    with np.load(feed_path) as data:
        feed = {name: data[name] for name in data.files}
    exact = _reset_peak() and _status_kib("VmRSS") is not None
    before_kib = _status_kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = load()
    for _ in range(runs):
        run(feed)
    after_kib = _status_kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"added_mib": (after_kib - before_kib) / 1024, "method": "VmHWM" if exact else "ru_maxrss"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
