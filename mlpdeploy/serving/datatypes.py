"""One table for the three names of a tensor element type: numpy/manifest, KServe v2, Triton config."""

from __future__ import annotations

import numpy as np

from mlpdeploy.contract import numpy_dtype
from mlpdeploy.errors import MlpdeployError

# manifest dtype, KServe v2 datatype, Triton model-config DataType
TABLE = [
    ("bool", "BOOL", "TYPE_BOOL"),
    ("uint8", "UINT8", "TYPE_UINT8"),
    ("uint16", "UINT16", "TYPE_UINT16"),
    ("uint32", "UINT32", "TYPE_UINT32"),
    ("uint64", "UINT64", "TYPE_UINT64"),
    ("int8", "INT8", "TYPE_INT8"),
    ("int16", "INT16", "TYPE_INT16"),
    ("int32", "INT32", "TYPE_INT32"),
    ("int64", "INT64", "TYPE_INT64"),
    ("float16", "FP16", "TYPE_FP16"),
    ("float32", "FP32", "TYPE_FP32"),
    ("float64", "FP64", "TYPE_FP64"),
    ("bfloat16", "BF16", "TYPE_BF16"),
]
TO_V2 = {m: v for m, v, _ in TABLE}
FROM_V2 = {v: m for m, v, _ in TABLE}
TO_CONFIG = {m: c for m, _, c in TABLE}


def v2_datatype(dtype: str | np.dtype) -> str:
    """The KServe v2 datatype of a manifest dtype or numpy dtype."""
    name = str(np.dtype(dtype)) if not isinstance(dtype, str) else dtype
    if name not in TO_V2:
        raise MlpdeployError(f"element type {name} has no KServe v2 datatype; serve models with numeric inputs and outputs")
    return TO_V2[name]


def config_datatype(dtype: str) -> str:
    if dtype not in TO_CONFIG:
        raise MlpdeployError(f"element type {dtype} has no Triton data type; package models with numeric inputs and outputs")
    return TO_CONFIG[dtype]


def numpy_of_v2(datatype: str) -> np.dtype:
    """The numpy dtype of a KServe v2 datatype (BF16 through ml_dtypes)."""
    return numpy_dtype(FROM_V2[datatype])
