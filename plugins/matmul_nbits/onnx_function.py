"""`mlpdeploy::MatMulInt4` / `mlpdeploy::MatMulInt8` `(A, B, scales[, zero_points]) <K, N>` as ONNX
functions whose body is the com.microsoft MatMulNBits node (4- or 8-bit, block 32, accuracy level 4)
each stands for: stock ONNX Runtime inlines the body; with mlpdeploy's kernel library registered,
the kernel (ort_kernel.c) runs instead."""

from __future__ import annotations

import onnx
from onnx import helper

from mlpdeploy.contract import DOMAIN, MS_DOMAIN

OPS = {4: "MatMulInt4", 8: "MatMulInt8"}  # bits -> op type
INPUTS = ("A", "B", "scales", "zero_points")
BLOCK_SIZE, ACCURACY_LEVEL = 32, 4  # the MatMulNBits nodes they take


def matmul_nbits_function(bits: int) -> onnx.FunctionProto:
    """The function definition of OPS[bits]; K and N are the calling node's attributes."""
    node = helper.make_node("MatMulNBits", list(INPUTS), ["Y"], domain=MS_DOMAIN, bits=bits, block_size=BLOCK_SIZE,
                            accuracy_level=ACCURACY_LEVEL)
    node.attribute.extend([helper.make_attribute_ref("K", onnx.AttributeProto.INT), helper.make_attribute_ref("N", onnx.AttributeProto.INT)])
    return helper.make_function(DOMAIN, OPS[bits], list(INPUTS), ["Y"], [node], [helper.make_opsetid(MS_DOMAIN, 1)], attributes=["K", "N"])
