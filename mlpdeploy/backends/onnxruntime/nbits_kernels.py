"""`--ort-kernels`: 4- and 8-bit MatMulNBits nodes run mlpdeploy's MatMulInt4 / MatMulInt8 kernels (plugins/matmul_nbits).

ONNX Runtime 1.32's MatMulNBits costs nearly M times its one-row time for M rows (a batched
decode step, a speculative verify pass, a prefill chunk). mlpdeploy's kernel computes the same
product with the same int8 activation rounding (accuracy level 4) and loads each block of codes
once for up to 8 rows, on ONNX Runtime's own intra-op threads (plugins/matmul_nbits/README.md).

After ONNX Runtime has written the optimized model, each MatMulNBits node the kernel takes (4 or
8 bits, block 32, accuracy level 4, no group index or bias, zero points absent or packed uint8)
becomes `mlpdeploy::MatMulInt4` or `mlpdeploy::MatMulInt8` with the same inputs and its K and N.
The model also gets the op's function body, that very MatMulNBits node, so the artifact still
runs in stock ONNX Runtime (a registered kernel wins over the body; without the library the body
is inlined). Nodes at accuracy level 0 (exact float activations, a plan's choice) keep MatMulNBits.
"""

from __future__ import annotations

import onnx
from onnx import helper

from mlpdeploy.contract import DOMAIN, MS_DOMAIN
from mlpdeploy.plugins.matmul_nbits.onnx_function import ACCURACY_LEVEL, BLOCK_SIZE, OPS, matmul_nbits_function


def kernel_bits(node: onnx.NodeProto, attrs: dict, uint8_initializers: set[str]) -> int | None:
    """The bits of the kernel op that computes `node` (a MatMulNBits node with attributes `attrs`), or None
    when no kernel takes it."""
    bits = attrs.get("bits", 4)
    if bits not in OPS or (attrs.get("block_size"), attrs.get("accuracy_level", 0)) != (BLOCK_SIZE, ACCURACY_LEVEL):
        return None
    inputs = list(node.input)
    while inputs and not inputs[-1]:
        inputs.pop()
    return bits if 3 <= len(inputs) <= 4 and (len(inputs) == 3 or inputs[3] in uint8_initializers) else None


def nbits_rewrite(model: onnx.ModelProto) -> tuple[dict[str, int], list[onnx.FunctionProto]]:
    """Rewrite `model`'s MatMulNBits nodes a kernel takes (see the module docstring), in memory; returns
    (op type → nodes rewritten, the functions of the ops used). `kernels.use_kernel_ops` runs it on a saved model."""
    uint8 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8}
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain != MS_DOMAIN or node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bits = kernel_bits(node, attrs, uint8)
        if bits is None:
            continue
        node.domain, node.op_type = DOMAIN, OPS[bits]
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("K", attrs["K"]), helper.make_attribute("N", attrs["N"])])
        counts[OPS[bits]] = counts.get(OPS[bits], 0) + 1
    return counts, [matmul_nbits_function(bits) for bits, op in OPS.items() if op in counts]
