"""Codecs (mlpdeploy.quant): E2M1/E4M3/E8M0 and nibble packing bit for bit against ml_dtypes and
onnx.reference, each weight format's rules, padding, and the errors a user can hit."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from mlpdeploy.quant import (
    QuantError,
    decode_e2m1,
    decode_e4m3,
    decode_e8m0,
    encode_e2m1,
    encode_e4m3,
    pack_nibbles,
    parse_format,
    unpack_nibbles,
)
from mlpdeploy.quant.packing import column_blobs, column_nibbles

from .onnx_forms import ml_dtypes_e2m1, reference_dequantize, reference_quantize_int4

FORMATS = ["nvfp4", "mxfp4", "int4", "int4-64", "int4-128", "int4asym", "int4asym-64", "int4asym-128"]


def _every_float32_near(limit: float, count: int = 200_001) -> np.ndarray:
    grid = np.linspace(-limit, limit, count, dtype=np.float32)
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5, 7.0, 1e9], np.float32)
    return np.concatenate([grid, ties, -ties, np.float32([0.0, -0.0, 1e-45, -1e-45])])


def test_e2m1_matches_ml_dtypes_bit_for_bit():
    x = _every_float32_near(8.0)
    assert np.array_equal(encode_e2m1(x), ml_dtypes_e2m1(x))
    codes = np.arange(16, dtype=np.uint8)
    assert np.array_equal(decode_e2m1(codes), codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32))


def test_e2m1_ties_to_even_and_saturates():
    assert decode_e2m1(encode_e2m1(np.float32([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 100.0, -7.0]))).tolist() == [
        0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, -6.0]
    assert encode_e2m1(np.float32([-0.0, -0.1])).tolist() == [8, 8]  # the sign of zero is kept


def test_e4m3_matches_ml_dtypes_bit_for_bit():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(200_000).astype(np.float32) * s for s in (1e-3, 1.0, 100.0)])
    x = np.concatenate([x, np.float32([448, -448, 2**-9, 2**-10, 3 * 2**-10, 0.0, -0.0])])
    assert np.array_equal(encode_e4m3(x), x.astype(ml_dtypes.float8_e4m3fn).view(np.uint8))
    codes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(decode_e4m3(codes), codes.view(ml_dtypes.float8_e4m3fn).astype(np.float32), equal_nan=True)


def test_e4m3_saturates_where_ml_dtypes_overflows_to_nan():
    assert decode_e4m3(encode_e4m3(np.float32([464.0, 1e6, -1e6]))).tolist() == [448.0, 448.0, -448.0]


def test_e8m0_matches_ml_dtypes():
    codes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(decode_e8m0(codes), codes.view(ml_dtypes.float8_e8m0fnu).astype(np.float32), equal_nan=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_refused_with_one_line(bad):
    with pytest.raises(QuantError, match="^cannot encode NaN or inf as E2M1"):
        encode_e2m1(np.float32([1.0, bad]))
    w = np.ones((20, 3), np.float32)
    w[7, 2] = bad
    for spec in FORMATS:
        with pytest.raises(QuantError) as info:
            parse_format(spec).quantize(w, "layers.0.mlp.down_proj.weight")
        message = str(info.value)
        assert "\n" not in message and "layers.0.mlp.down_proj.weight holds 1 non-finite value(s)" in message
        assert "at index (7, 2)" in message and "leave this layer out" in message


def test_pack_nibbles_low_first_and_odd_counts():
    assert pack_nibbles(np.array([1, 2, 3], np.uint8)).tolist() == [0x21, 0x03]
    codes = np.random.default_rng(0).integers(0, 16, 37).astype(np.uint8)
    assert np.array_equal(unpack_nibbles(pack_nibbles(codes), 37), codes)
    with pytest.raises(QuantError, match="below 16"):
        pack_nibbles(np.array([16], np.uint8))


def test_pack_matches_ml_dtypes_int4_packing():
    import onnx_ir as ir

    values = np.random.default_rng(1).integers(-8, 8, (5, 7)).astype(ml_dtypes.int4)
    packed = np.frombuffer(ir.tensor(values).tobytes(), np.uint8)  # ONNX's packing, as onnx_ir writes it
    assert np.array_equal(pack_nibbles(values.astype(np.int8).astype(np.uint8) & 0xF), packed)


def test_column_blobs_layout():
    codes = np.arange(64, dtype=np.uint8).reshape(32, 2) % 16  # Kp=32, N=2, block 16
    blobs = column_blobs(codes, 16)
    assert blobs.shape == (2, 2, 8)
    assert np.array_equal(unpack_nibbles(blobs[1, 1], 16), codes[16:, 1])
    assert column_nibbles(np.array([[1], [2], [3]], np.uint8)).tolist() == [[0x21, 0x03]]


@pytest.mark.parametrize("spec", FORMATS)
@pytest.mark.parametrize("shape", [(1, 1), (16, 3), (344, 40), (97, 13), (128, 1)])
def test_dequantize_matches_onnx_reference_bit_for_bit(spec, shape):
    rng = np.random.default_rng(sum(shape))
    w = (rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 30.0], size=(1, shape[1]))).astype(np.float32)
    q = parse_format(spec).quantize(w)
    ours = q.dequantize()
    assert ours.shape == shape and ours.dtype == np.float32
    assert np.array_equal(ours.view(np.uint32), reference_dequantize(q).view(np.uint32))


@pytest.mark.parametrize("spec", ["int4", "int4-128", "int4asym", "int4asym-64"])
def test_int4_codes_match_onnx_quantize_linear(spec):
    w = np.random.default_rng(3).standard_normal((200, 9)).astype(np.float32)
    q = parse_format(spec).quantize(w)
    assert np.array_equal(q.codes[:200], reference_quantize_int4(w, q))


def test_fp4_elements_are_e2m1_of_w_over_scale():
    w = np.random.default_rng(4).standard_normal((48, 5)).astype(np.float32)
    for spec in ("nvfp4", "mxfp4"):
        q = parse_format(spec).quantize(w)
        scale = np.repeat(q.block_scales(), q.block, axis=0)[:48]
        assert np.array_equal(q.codes[:48], ml_dtypes_e2m1((w / scale).astype(np.float32)))


def test_format_rules():
    w = np.zeros((32, 2), np.float32)
    w[:, 0] = np.linspace(-3, 12, 32)
    nv = parse_format("nvfp4").quantize(w)
    assert nv.global_scale == np.float32(12.0) / np.float32(6 * 448)
    assert decode_e4m3(nv.scales[:, 0]).max() == 448.0  # the block holding amax gets the largest FP8 scale
    mx = parse_format("mxfp4").quantize(w)
    assert mx.scales[:, 0].tolist() == [127 + 3 - 2]  # floor(log2(12)) = 3
    assert mx.scales[:, 1].tolist() == [0]  # an all-zero block: the smallest scale, 2^-127
    i4 = parse_format("int4").quantize(w)
    assert i4.scales[0, 0] == np.float32(12.0) / np.float32(7) and i4.scales[0, 1] == 1.0
    assert np.array_equal(i4.dequantize()[:, 1], np.zeros(32, np.float32))


def test_mxfp4_saturates_past_the_block_exponent():
    w = np.full((32, 1), 7.9, np.float32)  # floor(log2 7.9) - 2 = 0: 7.9 saturates to 6
    assert np.all(parse_format("mxfp4").quantize(w).dequantize() == 6.0)


@pytest.mark.parametrize("spec", FORMATS)
def test_padding_of_a_partial_block(spec):
    rng = np.random.default_rng(5)
    w = rng.standard_normal((37, 4)).astype(np.float32)
    q = parse_format(spec).quantize(w)
    block = q.block
    assert q.codes.shape == (-(-37 // block) * block, 4)
    padded = np.concatenate([w, np.zeros((q.codes.shape[0] - 37, 4), np.float32)])
    q_padded = parse_format(spec).quantize(padded)
    assert np.array_equal(q.scales, q_padded.scales) and np.array_equal(q.codes, q_padded.codes)
    assert np.array_equal(q.values()[37:], np.zeros_like(q.values()[37:]))  # padded positions decode to zero


def test_storage_bits():
    assert parse_format("nvfp4").bits_per_weight(4096, 4096) == pytest.approx(4.5, abs=1e-5)
    assert parse_format("mxfp4").bits_per_weight(4096, 4096) == 4.25
    assert parse_format("int4").bits_per_weight(4096, 4096) == 5.0
    assert parse_format("int4-128").bits_per_weight(4096, 4096) == 4.25
    assert parse_format("int4asym").bits_per_weight(4096, 4096) == 5.125
    q = parse_format("nvfp4").quantize(np.ones((20, 3), np.float32))
    assert q.nbytes() == 30 + 6 + 4


@pytest.mark.parametrize(("spec", "message"), [
    ("fp4", "unknown weight format 'fp4'; formats are nvfp4, mxfp4, int4, int4asym"),
    ("int4-48", "int4 blocks are 16 or 32 or 64 or 128 along the input dim, not 48"),
    ("nvfp4-32", "nvfp4 blocks are 16 along the input dim, not 32"),
    ("int4-x", "the block after '-' must be a number"),
])
def test_format_spec_errors(spec, message):
    with pytest.raises(QuantError, match=message.replace("(", r"\(")):
        parse_format(spec)


def test_bad_inputs():
    with pytest.raises(QuantError, match=r"has shape \[4\]; weight formats take a \[K, N\] matrix"):
        parse_format("int4").quantize(np.ones(4, np.float32))
    with pytest.raises(QuantError, match="past the"):
        parse_format("nvfp4").quantize(np.full((2, 2), 1e37, np.float32))
    with pytest.raises(QuantError, match="is empty"):
        parse_format("int4").quantize(np.ones((0, 3), np.float32))
