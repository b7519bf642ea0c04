"""GatedMLP's Triton kernel vs the torch reference.

On CPU it runs in Triton's interpreter (TRITON_INTERPRET=1, set by conftest); bench/gpu.sh
runs this same file compiled on a GPU with TRITON_INTERPRET=0.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from mlpdeploy.plugins.gated_mlp.kernel import (  # noqa: E402
    Config,
    check_inputs,
    default_config,
    gate_up_act,
    gated_mlp_triton,
    interpreting,
)
from mlpdeploy.plugins.gated_mlp.reference import ACTIVATIONS, activate, gated_mlp  # noqa: E402

if interpreting():
    DEVICE = "cpu"
elif torch.cuda.is_available():
    DEVICE = "cuda"
else:
    pytest.skip("TRITON_INTERPRET=0 and no CUDA device", allow_module_level=True)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def problem(lead, d, h, d_out, bias=(True, True), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, d, generator=g)
    w_gate_up = torch.randn(d, 2 * h, generator=g) / d**0.5
    w_down = torch.randn(h, d_out, generator=g) / h**0.5
    b_gate_up = torch.randn(2 * h, generator=g) * 0.5 if bias[0] else None
    b_down = torch.randn(d_out, generator=g) * 0.5 if bias[1] else None
    return x, w_gate_up, w_down, b_gate_up, b_down


def cast(tensors, dtype):
    return [None if t is None else t.to(device=DEVICE, dtype=dtype) for t in tensors]


def run_and_compare(tensors, activation, dtype_name, assert_close, config=None):
    dtype = DTYPES[dtype_name]
    low = cast(tensors, dtype)
    # Reference in fp32 on the same rounded inputs: only the kernel's arithmetic is measured.
    ref = gated_mlp(*[None if t is None else t.float().cpu() for t in low], activation=activation)
    y = gated_mlp_triton(*low, activation=activation, config=config)
    assert y.dtype == dtype and y.device.type == DEVICE
    return assert_close(y.float().cpu().numpy(), ref.numpy(), dtype_name, f"{activation}/{dtype_name}")


SHAPES = {
    "b1-odd": ((1,), 33, 47, 21),  # batch 1, odd d / h / d_out
    "bsd": ((2, 5), 64, 96, 48),  # 3-D [b, s, d]
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_kernel_matches_reference(activation, shape, dtype, assert_close):
    lead, d, h, d_out = SHAPES[shape]
    run_and_compare(problem(lead, d, h, d_out), activation, dtype, assert_close)


@pytest.mark.parametrize("bias", [(False, False), (True, False), (False, True)], ids=["nobias", "bgu", "bd"])
def test_kernel_bias_variants(bias, assert_close):
    run_and_compare(problem((3,), 33, 47, 21, bias=bias), "silu", "float32", assert_close)


@pytest.mark.parametrize(
    "config",
    [
        Config(block_m=16, block_n=16, block_k=16, group_m=2),  # many tiles, swizzled order
        Config(block_m=16, block_n=64, block_k=128),  # the GPU decode tiles
        Config(block_m=64, block_n=64, block_k=64),  # the GPU medium tiles
    ],
    ids=["16x16x16", "decode", "medium"],
)
def test_kernel_tiles_with_remainders(config, assert_close):
    """Every tile dimension ends in a partial tile: M=37, K=70, N=47."""
    run_and_compare(problem((37,), 70, 47, 30), "gelu_tanh", "float32", assert_close, config=config)


def test_gate_half_is_first():
    """Swapping the halves of W_gate_up changes the answer: the kernel activates the first half."""
    x, wgu, wd, _, _ = problem((4,), 16, 24, 16)
    h = wgu.shape[1] // 2
    swapped = torch.cat([wgu[:, h:], wgu[:, :h]], dim=1)
    x, wgu, swapped = cast([x, wgu, swapped], torch.float32)
    hidden = gate_up_act(x, wgu, None, "silu")
    expect = activate(x.cpu() @ wgu.cpu()[:, :h], "silu") * (x.cpu() @ wgu.cpu()[:, h:])
    torch.testing.assert_close(hidden.cpu(), expect, atol=1e-5, rtol=1e-5)
    assert (gate_up_act(x, swapped, None, "silu").cpu() - expect).abs().max() > 1e-2


def test_gate_up_act_writes_into_out_buffer():
    x, wgu, _, bgu, _ = cast(problem((5,), 33, 47, 21), torch.float32)
    buffer = torch.full((5 * 47 + 7,), float("nan"), device=DEVICE)
    out = buffer[: 5 * 47].view(5, 47)
    result = gate_up_act(x, wgu, bgu, "relu", out=out)
    assert result.data_ptr() == buffer.data_ptr()
    expect = activate(x @ wgu[:, :47] + bgu[:47], "relu") * (x @ wgu[:, 47:] + bgu[47:])
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)
    assert torch.isnan(buffer[5 * 47 :]).all()  # nothing written past the tile masks


def test_empty_batch():
    x, wgu, wd, _, _ = cast(problem((0,), 8, 8, 8), torch.float32)
    assert gated_mlp_triton(x, wgu, wd).shape == (0, 8)


def test_input_checks():
    x, wgu, wd, bgu, bd = problem((2,), 8, 6, 4)
    with pytest.raises(ValueError, match="unknown GatedMLP activation"):
        check_inputs(x, wgu, wd, bgu, bd, "swish")
    with pytest.raises(ValueError, match="shapes do not agree"):
        check_inputs(x[:, :7], wgu, wd, bgu, bd, "silu")
    with pytest.raises(ValueError, match="b_gate_up must have shape"):
        check_inputs(x, wgu, wd, bgu[:5], bd, "silu")
    with pytest.raises(ValueError, match="supports"):
        check_inputs(x.double(), wgu, wd, bgu, bd, "silu")


def test_default_config_by_token_count(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert default_config(1, 11008, 4096).block_m == 16
    assert default_config(64, 11008, 4096).block_m == 64
    assert default_config(2048, 11008, 4096).block_m == 128
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert default_config(1, 47, 33) == Config(block_m=16, block_n=64, block_k=64)
