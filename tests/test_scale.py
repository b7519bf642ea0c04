"""Scale: a model whose weights exceed 2 GB (protobuf's limit) exports, rewrites (fuse-gated-mlp),
builds (ONNX Runtime) and validates through ONNX external data, then is quantized (int4
quantize-weights on the fused graph) and built again, each stage in its own process so
its peak RSS is measured on its own, bounded by a multiple of the weight bytes; and a real
pretrained decoder, SmolLM2-135M, compiles with its KV cache in at most 3x its weight bytes (the
whole process). Slow (minutes, ~2.2 GB of weights written several times): `make test-slow`; the
1.1 B int4 compile is in bench/compile_memory.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "fixtures" / "scale_run.py"
WEIGHT_MIB = 16 * 3 * 2048 * 5632 * 4 / 2**20  # 2112 MiB (tests/fixtures/big_mlp.py)
# Peak RSS allowed per stage, in multiples of the fp32 weight bytes. Measured (CHANGELOG.md, issue 9 scale run):
# export 1.22x, rewrite 1.83x, build 1.19x (3.19x before the ORT fusions stopped copying the weights),
# validate 2.16x (torch model and ONNX Runtime session together), quantize (int4) 1.56x, build of the
# int4 model 1.41x.
BOUNDS = {"export": 2.0, "rewrite": 2.5, "build": 2.0, "validate": 3.0, "quantize": 2.5, "build-quantized": 2.0}


@pytest.mark.slow
def test_two_gigabyte_model_through_external_data(tmp_path):
    peaks = {}
    for stage in BOUNDS:
        proc = subprocess.run([sys.executable, str(SCRIPT), stage, str(tmp_path)], capture_output=True, text=True, timeout=3600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        peaks[stage] = float(re.search(r"peak_rss_mib=(\d+)", proc.stdout).group(1))
        if stage == "export":
            data = tmp_path / "model.onnx.data"
            assert data.stat().st_size > 2**31 and (tmp_path / "model.onnx").stat().st_size < 2**24
    for name in ("model.opt.onnx", "model.ort.onnx"):
        assert (tmp_path / f"{name}.data").stat().st_size > 2**31, f"{name} keeps its weights in external data"
    assert (tmp_path / "model.q.ort.onnx").stat().st_size < 2**31 // 4  # int4: about a sixth of the fp32 bytes
    print({k: f"{v:.0f} MiB ({v / WEIGHT_MIB:.2f}x weights)" for k, v in peaks.items()})
    over = {k: v for k, v in peaks.items() if v > BOUNDS[k] * WEIGHT_MIB}
    assert not over, f"peak RSS over {BOUNDS} x {WEIGHT_MIB:.0f} MiB: {over}"


def run_measured(cmd: list[str], timeout: float) -> tuple[int, float, str]:
    """Run `cmd`; (exit code, the kernel's peak RSS of it in MiB (os.wait4), its stderr's tail)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"{cmd} ran past {timeout} s")
            time.sleep(0.5)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, usage.ru_maxrss / 1024, err.read()[-3000:]


@pytest.mark.slow
def test_smollm2_compiles_with_its_cache_within_three_times_its_weights(smollm2_full, tmp_path):
    """`compile .cache/real/smollm2-135m --kv-cache`: the whole process's peak resident memory is at
    most 3x the fp32 weight bytes (538 MB), and the report's per-stage peaks say the same (run it
    alone: other work on the machine does not change a process's RSS, but run it under
    flock /tmp/mlpdeploy-heavy.lock anyway)."""
    weights = sum(f.stat().st_size for f in Path(smollm2_full).glob("*.safetensors"))
    out = tmp_path / "out"
    code, peak_mib, err = run_measured(
        [sys.executable, "-c", "from mlpdeploy.cli import main; main()", "compile", str(smollm2_full), "--kv-cache", "-o", str(out)],
        timeout=3600,
    )
    assert code in (0, 1), err  # 1: a numerics verdict (validation's business), not a failure to compile
    report = json.loads((out / "report.json").read_text())
    stages = {name: stage["peak_rss_mib"] for name, stage in report["stages"].items()}
    print(f"peak {peak_mib:.0f} MiB = {peak_mib * 2**20 / weights:.2f}x the weights; per stage {stages}")
    assert peak_mib * 2**20 <= 3 * weights, f"peak {peak_mib:.0f} MiB is over 3x the {weights / 2**20:.0f} MiB of weights: {stages}"
    assert abs(report["memory"]["peak_rss_mib"] - peak_mib) <= 0.05 * peak_mib  # the report sees the peak the kernel saw
    assert (out / "model.ort.onnx.data").stat().st_size > weights  # weights past the threshold travel in external data
