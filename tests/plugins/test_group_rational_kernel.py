"""GroupRational's Triton kernel vs the torch reference (CPU: Triton's interpreter; bench/gpu.sh
runs this file compiled on a GPU with TRITON_INTERPRET=0)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from mlpdeploy.errors import OpError  # noqa: E402
from mlpdeploy.plugins.group_rational.kernel import Config, default_config, group_rational_triton  # noqa: E402
from mlpdeploy.plugins.group_rational.onnx_function import random_coefficients  # noqa: E402
from mlpdeploy.plugins.group_rational.reference import group_rational  # noqa: E402
from mlpdeploy.plugins.triton_common import kernel_device  # noqa: E402

DEVICE = kernel_device() or pytest.skip("TRITON_INTERPRET=0 and no CUDA device", allow_module_level=True)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def problem(lead, groups, per_group, shared=False, degrees=(5, 4), seed=0, span=10.0):
    num, den = (torch.from_numpy(a) for a in random_coefficients(groups, *degrees, shared, seed))
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(*lead, groups * per_group, generator=g) * 2 - 1) * span
    return x, num, den


def run_and_compare(x, num, den, form, dtype_name, assert_close, config=None):
    dtype = DTYPES[dtype_name]
    low = [t.to(device=DEVICE, dtype=dtype) for t in (x, num, den)]
    ref = group_rational(*[t.float().cpu() for t in low], form)  # fp32 math on the same rounded inputs
    y = group_rational_triton(*low, form, config=config)
    assert y.dtype == dtype and y.shape == x.shape
    return assert_close(y.float().cpu().numpy(), ref.numpy(), dtype_name, f"{form}/{dtype_name}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["A", "B"])
def test_kernel_matches_reference(form, dtype, assert_close):
    # batch 1 and a 3-D input; 7 groups of 5 channels (odd, prime).
    run_and_compare(*problem((1,), 7, 5), form, dtype, assert_close)
    run_and_compare(*problem((2, 3), 7, 5, shared=True, seed=1), form, dtype, assert_close)


@pytest.mark.parametrize(
    "config", [Config(block_r=2, block_c=4), Config(block_r=4, block_c=8), Config(block_r=16, block_c=64)], ids=["2x4", "4x8", "16x64"]
)
def test_kernel_tiles_with_remainders(config, assert_close):
    """Rows 13 and 11 channels per group: every tile ends partial (or the tile is smaller than a group)."""
    run_and_compare(*problem((13,), 3, 11, degrees=(3, 2)), "B", "float32", assert_close, config=config)


def test_kernel_writes_into_out_and_nowhere_else():
    x, num, den = (t.to(DEVICE) for t in problem((3,), 2, 5))
    buffer = torch.full((3 * 10 + 5,), float("nan"), device=DEVICE)
    out = buffer[:30].view(3, 10)
    result = group_rational_triton(x, num, den, "A", out=out)
    assert result.data_ptr() == buffer.data_ptr()
    torch.testing.assert_close(out.cpu(), group_rational(x.cpu(), num.cpu(), den.cpu(), "A"), atol=1e-5, rtol=1e-5)
    assert torch.isnan(buffer[30:]).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf/inf, on purpose
def test_extreme_values():
    x = torch.tensor([[1e30, -1e30, 1e-40, -1e-40, 0.0, 1e6, -1e6, 3.0]], device=DEVICE)
    num, den = (torch.from_numpy(a).to(DEVICE) for a in random_coefficients(2, 5, 4, seed=5))
    y, ref = group_rational_triton(x, num, den, "A").cpu(), group_rational(x.cpu(), num.cpu(), den.cpu(), "A")
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.isnan(ref[0, :2]).all()
    torch.testing.assert_close(y[0, 2:], ref[0, 2:], rtol=1e-5, atol=1e-6)


def test_empty_and_errors():
    x, num, den = problem((0,), 2, 3)
    assert group_rational_triton(x.to(DEVICE), num.to(DEVICE), den.to(DEVICE), "A").shape == (0, 6)
    with pytest.raises(OpError, match="supports"):
        group_rational_triton(torch.zeros(2, 6, dtype=torch.float64), num, den, "A")
    with pytest.raises(OpError, match="not divisible"):
        group_rational_triton(torch.zeros(2, 5), num, den, "A")


def test_default_config(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cfg = default_config(16 * 197, 96)
    assert (cfg.block_c, cfg.block_r) == (128, 32) and cfg.block_r * cfg.block_c == 4096
    assert default_config(1, 3000).block_c == 1024
