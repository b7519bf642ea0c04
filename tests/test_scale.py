"""Scale: a model whose weights exceed 2 GB (protobuf's limit) exports, rewrites (fuse-gated-mlp),
builds (ONNX Runtime) and validates through ONNX external data, then is quantized (int4
quantize-weights on the fused graph) and built again, each stage in its own process so
its peak RSS is measured on its own, bounded by a multiple of the weight bytes. Slow (minutes,
~2.2 GB of weights written several times): `make test-slow`."""

from __future__ import annotations

import re
import subprocess
import sys
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
