"""BSplineKAN's Triton kernel vs the torch reference (CPU: Triton's interpreter; bench/gpu.sh runs
this file compiled on a GPU with TRITON_INTERPRET=0)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from mlpdeploy.errors import OpError  # noqa: E402
from mlpdeploy.plugins.bspline_kan.kernel import bspline_kan_triton  # noqa: E402
from mlpdeploy.plugins.bspline_kan.onnx_function import random_weights  # noqa: E402
from mlpdeploy.plugins.bspline_kan.reference import bspline_kan  # noqa: E402
from mlpdeploy.plugins.triton_common import kernel_device  # noqa: E402

DEVICE = kernel_device() or pytest.skip("TRITON_INTERPRET=0 and no CUDA device", allow_module_level=True)

def run_kernel(lead, in_features, out_features, dtype, assert_close, grid_size=5, span=3.0, seed=0):
    w = [torch.from_numpy(v) for v in random_weights(in_features, out_features, grid_size, grid_range=(-2.0, 2.0), seed=seed).values()]
    x = (torch.rand(*lead, in_features, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * span
    low = [t.to(device=DEVICE, dtype=getattr(torch, dtype)) for t in (x, *w)]
    y = bspline_kan_triton(*low)
    assert y.dtype == low[0].dtype and y.shape == (*lead, out_features)
    return assert_close(y.float().cpu().numpy(), bspline_kan(*[t.float().cpu() for t in low]).numpy(), dtype, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_kernel_matches_reference(dtype, assert_close):
    run_kernel((1,), 13, 7, dtype, assert_close)
    run_kernel((2, 3), 70, 33, dtype, assert_close, seed=1)  # partial tiles in every dim


def test_kernel_refuses_other_orders():
    w = [torch.from_numpy(v) for v in random_weights(4, 3, spline_order=2).values()]
    with pytest.raises(OpError, match="computes cubic splines .* order 2"):
        bspline_kan_triton(torch.zeros(2, 4), *w)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")  # SiLU of -1e30, on purpose
def test_kernel_extreme_values():
    w = [torch.from_numpy(v).to(DEVICE) for v in random_weights(4, 3, seed=6).values()]
    x = torch.tensor([[1e30, -1e30, 1e-40, 0.0], [-1e-40, 2.5, -0.3, 1e6]], device=DEVICE)
    y, ref = bspline_kan_triton(x, *w).cpu(), bspline_kan(x.cpu(), *[t.cpu() for t in w])
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
