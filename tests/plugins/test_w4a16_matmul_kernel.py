"""W4A16MatMul's Triton kernel vs the torch reference (CPU: Triton's interpreter; bench/gpu.sh runs
this file compiled on a GPU with TRITON_INTERPRET=0): every format, batch 1..16 rows, K not a
multiple of the block, fp32/fp16/bf16 activations, extreme scales."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from mlpdeploy.plugins.triton_common import kernel_device  # noqa: E402
from mlpdeploy.plugins.w4a16_matmul.kernel import w4a16_matmul_triton  # noqa: E402
from mlpdeploy.plugins.w4a16_matmul.reference import w4a16_matmul  # noqa: E402

DEVICE = kernel_device() or pytest.skip("TRITON_INTERPRET=0 and no CUDA device", allow_module_level=True)


def _sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OP = _sibling("test_w4a16_matmul")


def run_kernel(spec, rows, k, n, dtype, assert_close, seed=0, scale=1.0):
    arrays, q = OP.storage(spec, k, n, seed=seed, scale=scale)
    weights = [t.to(DEVICE) if t is not None else None for t in OP.torch_inputs(arrays)]
    x = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal((rows, k)).astype(np.float32)).to(DEVICE, getattr(torch, dtype))
    y = w4a16_matmul_triton(x, *weights, q.format.name)
    assert y.dtype == x.dtype and y.shape == (rows, n)
    ref = w4a16_matmul(x.float().cpu(), *[t.cpu() if t is not None else None for t in weights], fmt=q.format.name)
    return assert_close(y.float().cpu().numpy(), ref.numpy(), dtype, f"{spec}/{dtype}/{rows}x{k}x{n}")


@pytest.mark.parametrize("spec", OP.SPECS)
@pytest.mark.parametrize("rows", [1, 3, 16])
def test_kernel_matches_reference(spec, rows, assert_close):
    run_kernel(spec, rows, 344, 40, "float32", assert_close)  # K = 344: a partial last block for 16 and 32


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_kernel_low_precision_activations(dtype, assert_close):
    for spec in ("nvfp4", "int4asym"):
        run_kernel(spec, 5, 131, 17, dtype, assert_close, seed=2)


def test_kernel_extreme_scales(assert_close):
    """Weights around 1e-30 and 1e30: E8M0's denormal 2^-127 region and large E4M3 · global scales decode exactly."""
    for spec in ("mxfp4", "nvfp4", "int4"):
        for scale in (1e-30, 1e30):
            arrays, q = OP.storage(spec, 64, 8, seed=3, scale=scale)
            weights = [t.to(DEVICE) if t is not None else None for t in OP.torch_inputs(arrays)]
            x = torch.ones(2, 64, device=DEVICE) / scale
            y = w4a16_matmul_triton(x, *weights, q.format.name).cpu()
            ref = torch.from_numpy((np.ones((2, 64), np.float64) / scale) @ q.dequantize().astype(np.float64)).float()
            torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))


def test_kernel_properties(assert_close):
    """Hypothesis: any format, rows 1..16, K and N in {1, odd, prime, block multiples}."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=12, deadline=None)
    @hypothesis.given(spec=st.sampled_from(OP.SPECS), rows=st.sampled_from([1, 2, 7, 16]), k=st.sampled_from([1, 17, 32, 97, 160]),
                      n=st.sampled_from([1, 3, 31, 64]), seed=st.integers(0, 2**16))
    def check(spec, rows, k, n, seed):
        run_kernel(spec, rows, k, n, "float32", assert_close, seed=seed)

    check()


@pytest.mark.slow
def test_gpu_benchmark_plumbing(tmp_path):
    """bench/w4a16_kernel.py --smoke: the script bench/gpu.sh runs, run as it runs it (a process of
    its own, on tiny shapes in the interpreter), checks every point against the reference and
    writes its JSON."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "bench" / "w4a16_kernel.py"
    done = subprocess.run([sys.executable, str(script), "--smoke", "--json", str(tmp_path / "w4a16.json")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads((tmp_path / "w4a16.json").read_text())
    assert data["smoke"] and {r["format"] for r in data["results"]} == {"nvfp4", "mxfp4", "int4"} and all(r["ok"] for r in data["results"])
