"""The facts every floor of mlpdeploy shares, in one place: ONNX versions and domains, the KV-cache
interface, TensorRT's type names, bfloat16 handling, the FP4 code tables, the weight formats'
block sizes.

This module sits at the bottom of the house: it imports numpy and nothing from mlpdeploy, so
every stage and `plugins/` (which may import only this and `errors`) can read it. A value that
appears here must not be written down anywhere else; `tests/test_contract.py` checks the tables
against ml_dtypes and ONNX Runtime.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

# ---- ONNX -----------------------------------------------------------------------------------------

DEFAULT_OPSET = 20  # what `export`/`compile` write (torch's dynamo exporter's own default)
IR_VERSION = 10  # model-local function overloads (ONNX IR v10); every model mlpdeploy writes has at least this
BLOCKED_DQ_OPSET = 21  # DequantizeLinear with block_size and INT4/UINT4 inputs
FLOAT4_OPSET = 23  # FLOAT4E2M1 tensors (and DequantizeLinear of them)
FLOAT4_IR_VERSION = 11  # the IR version FLOAT4E2M1 tensors need


def ir_version_for(opset: int, current: int | None = None) -> int:
    """The IR version a model of default-domain `opset` needs (never lower than `current`)."""
    need = FLOAT4_IR_VERSION if opset >= FLOAT4_OPSET else IR_VERSION
    return max(current or IR_VERSION, need)


DOMAIN = "mlpdeploy"  # every custom op a pass inserts (a model-local function in this domain)
DOMAIN_VERSION = 1
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's contrib ops (MatMulNBits, GroupQueryAttention, ...)
STANDARD_DOMAINS = ("", "ai.onnx")
# TensorRT's ONNX parser picks a registered plugin for a node that carries these attributes (TensorRT >= 10.7).
PLUGIN_NAMESPACE = "mlpdeploy"
PLUGIN_VERSION = "1"

# ---- decoders with a KV cache (the names Optimum and onnxruntime-genai use) ------------------------

INPUT_IDS, ATTENTION_MASK, POSITION_IDS, LOGITS = "input_ids", "attention_mask", "position_ids", "logits"
# optional input of onnxruntime builds ([1] int64, default: every position): logits for the last N fed positions only
LOGITS_TO_KEEP = "logits_to_keep"
TOKEN_ROWS = "token_rows"  # CachedAttention's ragged step: the cache row of every fed token (backends/onnxruntime/attention_kernels.py)
PAST_TEMPLATE = "past_key_values.{layer}.{kind}"  # kind: key | value
PRESENT_TEMPLATE = "present.{layer}.{kind}"
CACHE_INPUT = re.compile(r"past_key_values\.(\d+)\.(key|value)")
CACHE_OUTPUT = re.compile(r"present\.(\d+)\.(key|value)")


def cache_input_names(layer: int) -> tuple[str, str]:
    """(key, value) graph input names of a cached layer's past."""
    return PAST_TEMPLATE.format(layer=layer, kind="key"), PAST_TEMPLATE.format(layer=layer, kind="value")


def cache_output_names(layer: int) -> tuple[str, str]:
    """(key, value) graph output names of a cached layer's present."""
    return PRESENT_TEMPLATE.format(layer=layer, kind="key"), PRESENT_TEMPLATE.format(layer=layer, kind="value")


def cache_printf(template: str, kind: str) -> str:
    """A cache name as a printf pattern over the layer (`past_key_values.%d.key`), as onnxruntime-genai's config writes it."""
    return template.format(layer="%d", kind=kind)


# ---- element types --------------------------------------------------------------------------------

# TensorRT DataType member name → numpy/torch dtype name (the same names in both).
TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
              "INT32": "int32", "INT64": "int64", "BOOL": "bool"}
# numpy has no bfloat16: ml_dtypes supplies it, and a bfloat16 tensor crosses into numpy (or
# __cuda_array_interface__, which has no bfloat16 typestr either) as its raw 16 bits.
BFLOAT16_BITS = "int16"


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype called `name` (bfloat16 through ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def tensor_to_numpy(tensor: Any) -> np.ndarray:
    """A CPU torch tensor as a numpy array of the same dtype (bfloat16: ml_dtypes', same bits)."""
    if str(tensor.dtype) == "torch.bfloat16":
        import torch

        return tensor.view(getattr(torch, BFLOAT16_BITS)).numpy().view(numpy_dtype("bfloat16"))
    return tensor.numpy()


# ---- 4-bit weight formats: code tables and block sizes ---------------------------------------------

E2M1_MAX, E4M3_MAX, E8M0_BIAS = 6.0, 448.0, 127
# Non-negative values in code order (code = index; the sign is bit 3 for E2M1, bit 7 for E4M3).
E2M1_GRID = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
E2M1_VALUES = np.concatenate([E2M1_GRID, -E2M1_GRID]).astype(np.float32)  # float32 value of codes 0..15 (code 8: −0)
INT4_VALUES = np.array([*range(8), *range(-8, 0)], np.float32)  # two's-complement 4-bit codes 0..15


def _e4m3_grid() -> np.ndarray:
    codes = np.arange(127)  # 0x7F is NaN
    exponent, mantissa = codes >> 3, codes & 7
    return np.where(exponent == 0, mantissa / 8 * 2.0**-6, (1 + mantissa / 8) * 2.0 ** (exponent - 7))


E4M3_GRID = _e4m3_grid()
E4M3_VALUES = np.concatenate([E4M3_GRID, [np.nan], -E4M3_GRID, [np.nan]]).astype(np.float32)  # FP8 E4M3FN codes 0..255
# E8M0 code e is 2^(e − 127) (0xFF: NaN); exact in float32, 2^-127 a denormal.
E8M0_VALUES = np.where(np.arange(256) == 0xFF, np.nan, np.ldexp(1.0, np.arange(256) - E8M0_BIAS)).astype(np.float32)

WEIGHT_FORMATS = ("nvfp4", "mxfp4", "int4", "int4asym", "int8")
# Block sizes along the input dim each format takes, and its default. INT4's are every size all of
# its forms run: MatMulNBits (a power of two >= 16), blocked DequantizeLinear and W4A16MatMul;
# tests/test_contract.py builds each one in each form and runs it. INT8 (8-bit MatMulNBits, blocked
# DequantizeLinear) is tested at its blocks in tests/quant and tests/passes.
WEIGHT_BLOCKS = {"nvfp4": (16,), "mxfp4": (32,), "int4": (16, 32, 64, 128), "int4asym": (16, 32, 64, 128), "int8": (32, 64, 128)}
DEFAULT_BLOCK = {"nvfp4": 16, "mxfp4": 32, "int4": 32, "int4asym": 32, "int8": 32}
