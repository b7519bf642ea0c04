"""`mlpdeploy::MatMulInt4(A, B, scales[, zero_points]) <K, N>` as an ONNX function whose body is the
com.microsoft MatMulNBits node (4-bit, block 32, accuracy level 4) it stands for: stock ONNX Runtime
inlines the body; with mlpdeploy's kernel library registered, the kernel (ort_kernel.c) runs instead."""

from __future__ import annotations

import onnx
from onnx import helper

from mlpdeploy.contract import DOMAIN, MS_DOMAIN

OP = "MatMulInt4"
INPUTS = ("A", "B", "scales", "zero_points")
ATTRIBUTES = {"bits": 4, "block_size": 32, "accuracy_level": 4}  # the MatMulNBits nodes it takes


def matmul_int4_function() -> onnx.FunctionProto:
    """The function definition; K and N are the calling node's attributes."""
    node = helper.make_node("MatMulNBits", list(INPUTS), ["Y"], domain=MS_DOMAIN, **ATTRIBUTES)
    node.attribute.extend([helper.make_attribute_ref("K", onnx.AttributeProto.INT), helper.make_attribute_ref("N", onnx.AttributeProto.INT)])
    return helper.make_function(DOMAIN, OP, list(INPUTS), ["Y"], [node], [helper.make_opsetid(MS_DOMAIN, 1)], attributes=["K", "N"])
