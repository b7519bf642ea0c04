"""`--ort-kernels`: int4 MatMulNBits nodes run mlpdeploy's MatMulInt4 kernel (plugins/matmul_int4).

ONNX Runtime 1.32's MatMulNBits costs nearly M times its one-row time for M rows (a batched
decode step, a speculative verify pass, a prefill chunk). mlpdeploy's kernel computes the same
product with the same int8 activation rounding (accuracy level 4) and unpacks each block of codes
once for up to 8 rows, on ONNX Runtime's own intra-op threads (bench/matmul_int4.py measures it).

After ONNX Runtime has written the optimized model, each MatMulNBits node it can take (4-bit,
block 32, accuracy level 4, no group index or bias, zero points absent or packed uint8) becomes
`mlpdeploy::MatMulInt4` with the same inputs and its K and N. The model also gets the op's
function body, that very MatMulNBits node, so the artifact still runs in stock ONNX Runtime
(a registered kernel wins over the body; without the library the body is inlined). Nodes at
accuracy level 0 (exact float activations, a plan's choice) keep MatMulNBits.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from mlpdeploy.contract import DOMAIN, MS_DOMAIN
from mlpdeploy.plugins.matmul_int4.onnx_function import ATTRIBUTES, matmul_int4_function
from mlpdeploy.plugins.matmul_int4.onnx_function import OP as KERNEL_OP


def _takes(node: onnx.NodeProto, uint8_initializers: set[str]) -> bool:
    if node.domain != MS_DOMAIN or node.op_type != "MatMulNBits":
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if (attrs.get("bits", 4), attrs.get("block_size"), attrs.get("accuracy_level", 0)) != tuple(ATTRIBUTES.values()):
        return False
    inputs = list(node.input)
    while inputs and not inputs[-1]:
        inputs.pop()
    return 3 <= len(inputs) <= 4 and (len(inputs) == 3 or inputs[3] in uint8_initializers)


def use_int4_kernel(saved: Path) -> int:
    """Rewrite the optimized model at `saved` in place (see the module docstring); returns the nodes rewritten."""
    model = onnx.load(str(saved), load_external_data=False)
    uint8 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8}
    count = 0
    for node in model.graph.node:
        if not _takes(node, uint8):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        node.domain, node.op_type = DOMAIN, KERNEL_OP
        del node.attribute[:]
        node.attribute.extend([helper.make_attribute("K", attrs["K"]), helper.make_attribute("N", attrs["N"])])
        count += 1
    if count:
        if not any(f.domain == DOMAIN and f.name == KERNEL_OP for f in model.functions):
            model.functions.append(matmul_int4_function())
        for domain, version in ((DOMAIN, 1), (MS_DOMAIN, 1)):
            if not any(o.domain == domain for o in model.opset_import):
                model.opset_import.append(helper.make_opsetid(domain, version))
        onnx.save(model, str(saved))
    return count
