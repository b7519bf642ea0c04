"""How a quantized weight is written into a graph, per build target (used by `quantize-weights`).

Operator forms replace `x · W` by one node reading x:

* `matmul_nbits` — INT4 as `com.microsoft::MatMulNBits` (bits 4, codes + 8 when symmetric,
  packed zero points when asymmetric), and FP4 re-encoded exactly as an 8-bit MatMulNBits:
  every E2M1 value v is a multiple of 1/2 in [−6, 6], so `2v + 128` is a uint8 code and
  `(2v + 128 − 128) · (s / 2) = v · s` exactly (s / 2 is exact in float32 down to 2^-148);
* `w4a16` — `mlpdeploy::W4A16MatMul` (the portable function body; with its plugin attributes
  datacenter TensorRT runs mlpdeploy's Triton kernel instead).

Weight forms give a value W' to multiply by, as TensorRT's ONNX parser reads quantized weights:

* NVFP4: `DequantizeLinear(FLOAT4E2M1 [K, N], DequantizeLinear(FLOAT8E4M3FN [KB, N], FP32 s2), axis 0, block 16)`
  (opset 23, what TensorRT Model Optimizer writes);
* INT4: `DequantizeLinear(INT4 [K, N], FP32 [KB, N], axis 0, block)` (opset 21).

Every form decodes to exactly `QuantizedWeight.dequantize()` (tested bit for bit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import BLOCKED_DQ_OPSET, FLOAT4_OPSET, MS_DOMAIN
from mlpdeploy.passes.matching import add_initializer, unique_name
from mlpdeploy.plugins.w4a16_matmul.onnx_function import ensure_function as ensure_w4a16
from mlpdeploy.plugins.w4a16_matmul.onnx_function import w4a16_matmul_node
from mlpdeploy.quant import Format, QuantizedWeight, column_blobs, column_nibbles, decode_e2m1, signed_int4

MS = MS_DOMAIN
FORM_OPSET = {"dq-nvfp4": FLOAT4_OPSET, "dq-int4": BLOCKED_DQ_OPSET}  # lowest default-domain opset each weight form needs
FORMS = ("nbits4", "nbits8", "w4a16-function", "w4a16-plugin", "dq")


def form_for(fmt: Format, target: str, fp4_form: str) -> str:
    """Which form `quantize-weights` writes a weight of `fmt` in for `target` (ort | trt);
    `fp4_form` (nbits8 | function) decides FP4 on ONNX Runtime."""
    if target == "trt":
        return "w4a16-plugin" if fmt.name == "mxfp4" else "dq"
    if fmt.fp4:
        return "nbits8" if fp4_form == "nbits8" else "w4a16-function"
    return "nbits4"


def stored_bytes(fmt: Format, k: int, n: int, form: str, scale_bytes: int = 4) -> int:
    """Bytes of the initializers `form` writes for a [K, N] weight of `fmt` (`scale_bytes`: the
    activation dtype's size, which MatMulNBits scales take)."""
    blocks = -(-k // fmt.block)
    kp = blocks * fmt.block
    if form in ("nbits4", "nbits8"):
        codes = n * kp // (2 if form == "nbits4" else 1)
        zero_points = n * -(-blocks // 2) if fmt.name == "int4asym" else 0
        return codes + n * blocks * scale_bytes + zero_points
    if form.startswith("w4a16"):
        extra = 4 if fmt.name == "nvfp4" else n * blocks if fmt.name == "int4asym" else 0
        return n * kp // 2 + n * blocks * (1 if fmt.fp4 else 4) + extra
    rows = kp if k % fmt.block else k  # TensorRT forms pad to whole blocks
    scales = blocks * n * (1 if fmt.name == "nvfp4" else 4) + (4 if fmt.name == "nvfp4" else 0)
    return -(-rows * n // 2) + scales


@dataclass
class Emitted:
    """New nodes (in order) computing `output`, and the bytes of the initializers they added."""

    nodes: list[ir.Node]
    output: ir.Value
    bytes: int
    form: str
    initializers: list[ir.Value] = field(default_factory=list)


class Writer:
    """Adds initializers and nodes named after one site (`base`) to `graph`."""

    def __init__(self, graph: ir.Graph, base: str, taken: set[str]):
        self.graph, self.base, self.taken = graph, base, taken
        self.nodes: list[ir.Node] = []
        self.bytes = 0

    def constant(self, suffix: str, array: np.ndarray) -> ir.Value:
        self.bytes += int(array.nbytes)
        return add_initializer(self.graph, unique_name(f"{self.base}.{suffix}", self.taken), array)

    def nibbles(self, suffix: str, array: np.ndarray) -> ir.Value:
        """A 4-bit tensor (ml_dtypes int4 / float4, one element a byte in numpy, two a byte in ONNX)."""
        self.bytes += -(-array.size // 2)
        return add_initializer(self.graph, unique_name(f"{self.base}.{suffix}", self.taken), array)

    def node(self, op_type: str, inputs, domain: str = "", **attributes) -> ir.Node:
        node = ir.node(op_type, inputs, attributes, domain=domain, name=unique_name(f"{self.base}/{op_type}", self.taken))
        self.nodes.append(node)
        return node

    def done(self, output: ir.Value, form: str) -> Emitted:
        return Emitted(self.nodes, output, self.bytes, form)


def matmul_nbits(w: Writer, x: ir.Value, q: QuantizedWeight, accuracy_level: int, dtype: np.dtype) -> Emitted:
    """x · W as one MatMulNBits: 4-bit for INT4, an exact 8-bit re-encoding for FP4."""
    scales = q.block_scales().T  # [N, KB]
    if q.format.fp4:
        bits = 8
        codes = (2 * decode_e2m1(q.codes) + 128).astype(np.uint8)  # [Kp, N]
        blob = np.ascontiguousarray(codes.T).reshape(q.n, -1, q.block)
        scales = (scales / np.float32(2)).astype(np.float32)
        form = "MatMulNBits(8-bit, exact FP4)"
    else:
        bits = 4
        codes = (signed_int4(q.codes) + 8).astype(np.uint8) if q.format.name == "int4" else q.codes
        blob = column_blobs(codes, q.block)
        form = "MatMulNBits(4-bit)"
    inputs = [x, w.constant("qweight", blob), w.constant("scales", np.ascontiguousarray(scales).astype(dtype))]
    if q.format.name == "int4asym":
        inputs.append(w.constant("zero_points", column_nibbles(q.zero_points)))
    node = w.node("MatMulNBits", inputs, domain=MS, K=q.k, N=q.n, bits=bits, block_size=q.block, accuracy_level=accuracy_level)
    return w.done(node.outputs[0], form)


def w4a16(w: Writer, model: ir.Model, x: ir.Value, q: QuantizedWeight, plugin: bool) -> Emitted:
    """x · W as mlpdeploy::W4A16MatMul (plugin attributes kept only when `plugin`)."""
    packed = w.constant("qweight", column_blobs(q.codes, q.block))
    inputs = [x, packed, w.constant("scales", np.ascontiguousarray(q.scales.T))]
    if q.format.name == "nvfp4":
        inputs.append(w.constant("global_scale", np.array([q.global_scale], np.float32)))
    if q.format.name == "int4asym":
        inputs.append(w.constant("zero_points", np.ascontiguousarray(q.zero_points.T)))
    node = w4a16_matmul_node(*inputs, fmt=q.format.name, k=q.k, name=unique_name(f"{w.base}/W4A16MatMul", w.taken))
    if not plugin:
        for attr in ("plugin_namespace", "plugin_version"):
            node.attributes.pop(attr, None)
    w.nodes.append(node)
    ensure_w4a16(model, node)
    return w.done(node.outputs[0], "W4A16MatMul" + (" (plugin)" if plugin else " (function)"))


def dequantized_weight(w: Writer, q: QuantizedWeight, padded: bool = False) -> Emitted:
    """W' [K, N] float32 as TensorRT reads quantized weights (NVFP4 two-level DQ, INT4 blocked DQ);
    [Kp, N] with the zero-padded last block when `padded` (TensorRT wants whole blocks)."""
    codes = q.codes if padded else q.codes[: q.k]
    if q.format.name == "nvfp4":
        fp4 = w.nibbles("weight_fp4", codes.view(ml_dtypes.float4_e2m1fn))
        fp8 = w.constant("scale_fp8", np.ascontiguousarray(q.scales).view(ml_dtypes.float8_e4m3fn))
        block_scale = w.node("DequantizeLinear", [fp8, w.constant("scale_fp32", np.array(q.global_scale, np.float32))]).outputs[0]
        out = w.node("DequantizeLinear", [fp4, block_scale], axis=0, block_size=q.block).outputs[0]
        return w.done(out, "DequantizeLinear(FLOAT4E2M1) ← DequantizeLinear(FLOAT8E4M3FN)")
    int4 = w.nibbles("weight_int4", signed_int4(codes).astype(ml_dtypes.int4))
    out = w.node("DequantizeLinear", [int4, w.constant("scale", q.scales)], axis=0, block_size=q.block).outputs[0]
    return w.done(out, "DequantizeLinear(INT4)")


def padded_input(w: Writer, x: ir.Value, q: QuantizedWeight, dtype: np.dtype) -> ir.Value:
    """x zero-padded along its last dim from K to whole blocks (TensorRT's parser refuses blocked
    DequantizeLinear whose axis is not a whole number of blocks); exact: padded terms are 0 · 0."""
    pad = q.codes.shape[0] - q.k
    pads, axes = w.constant("pads", np.array([0, pad], np.int64)), w.constant("pad_axes", np.array([-1], np.int64))
    return w.node("Pad", [x, pads, w.constant("pad_value", np.zeros((), dtype)), axes]).outputs[0]
