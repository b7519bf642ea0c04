"""Names of numeric types, in one place: engine precisions and torch ↔ numpy dtype names."""

from __future__ import annotations

import onnx_ir as ir

from mlpdeploy.errors import MlpdeployError

# Engine / graph precisions a user can ask for (build --precision, validation tolerances),
# and the ONNX element type each computes in.
PRECISION_DTYPES = {"fp32": ir.DataType.FLOAT, "fp16": ir.DataType.FLOAT16, "bf16": ir.DataType.BFLOAT16}
PRECISIONS = tuple(PRECISION_DTYPES)


def check_precision(precision: str) -> ir.DataType:
    """The ONNX element type of `precision`, or a one-line error listing the precisions."""
    if precision not in PRECISION_DTYPES:
        raise MlpdeployError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return PRECISION_DTYPES[precision]


def precision_name(dtype: ir.DataType) -> str:
    """`fp32`/`fp16`/`bf16` for those ONNX types, else the type's own name in lower case."""
    names = {v: k for k, v in PRECISION_DTYPES.items()}
    return names.get(dtype, dtype.name.lower())

_TORCH_TO_NUMPY = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float64": "float64",
    "int64": "int64",
    "int32": "int32",
    "bool": "bool",
    "uint8": "uint8",
}


def numpy_dtype_name(dtype) -> str:
    """The numpy dtype name of a torch dtype (bfloat16 via ml_dtypes)."""
    return _TORCH_TO_NUMPY[str(dtype).removeprefix("torch.")]
