"""FANLayer's Triton kernel vs the torch reference (CPU: Triton's interpreter; bench/gpu.sh runs
this file compiled on a GPU with TRITON_INTERPRET=0)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from mlpdeploy.plugins.fan_layer.kernel import fan_layer_triton  # noqa: E402
from mlpdeploy.plugins.fan_layer.onnx_function import random_weights  # noqa: E402
from mlpdeploy.plugins.fan_layer.reference import fan_layer  # noqa: E402
from mlpdeploy.plugins.triton_common import kernel_device  # noqa: E402

DEVICE = kernel_device() or pytest.skip("TRITON_INTERPRET=0 and no CUDA device", allow_module_level=True)


def run_kernel(lead, in_features, p, d, activation, dtype, assert_close, span=3.0, seed=0):
    w = [torch.from_numpy(v) for v in random_weights(in_features, p, d, seed=seed).values()]
    x = (torch.rand(*lead, in_features, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * span
    low = [t.to(device=DEVICE, dtype=getattr(torch, dtype)) for t in (x, *w)]
    y = fan_layer_triton(*low, activation)
    assert y.dtype == low[0].dtype and y.shape == (*lead, 2 * p + d)
    return assert_close(y.float().cpu().numpy(), fan_layer(*[t.float().cpu() for t in low], activation).numpy(), dtype, f"{activation}/{dtype}")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_kernel_matches_reference(activation, dtype, assert_close):
    run_kernel((1,), 13, 5, 7, activation, dtype, assert_close)
    run_kernel((2, 3), 70, 33, 65, activation, dtype, assert_close, seed=1)  # partial tiles, P and D tiles both


def test_kernel_without_periodic_part(assert_close):
    run_kernel((4,), 9, 0, 6, "relu", "float32", assert_close)


def test_kernel_extreme_values():
    w = [torch.from_numpy(v).to(DEVICE) for v in random_weights(4, 2, 5, seed=6).values()]
    x = torch.tensor([[1e-40, -1e-40, 0.0, 1e3], [-1e3, 5.0, -1e-38, 0.5]], device=DEVICE)
    y, ref = fan_layer_triton(x, *w, "gelu").cpu(), fan_layer(x.cpu(), *[t.cpu() for t in w], "gelu")
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
