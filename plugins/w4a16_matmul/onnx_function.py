"""W4A16MatMul as an ONNX model-local function: a node builder and the standard-op body.

One FunctionProto per format, all named `mlpdeploy::W4A16MatMul`, told apart by the IR v10
`overload` (the format's name): the inputs differ (nvfp4 adds the global scale, int4asym the
zero points; no empty slots). Attributes `format`, `K`, `block_size`, `plugin_namespace`,
`plugin_version` are declared (the body reads K from x's last dim and the block from the packed shape).

Body (default-domain opset ≥ 18 for BitwiseAnd):
    codes  = Reshape(Concat(BitwiseAnd(P, 15), BitShift(P, 4, RIGHT)) on a new last axis, [N, KB, block])
    values = Gather(E2M1 or INT4 table, codes)          | Cast(codes) − Cast(zero_points)   (int4asym)
    scale  = Gather(E4M3 table, S) · global_scale        | Gather(E8M0 table, S) | S
    W      = Transpose(Reshape(values · scale, [N, KB·block]))                  [KB·block, N]
    y      = CastLike(MatMul(Pad(Cast(x, float), K → KB·block with zeros), W), x)
ONNX Runtime folds the decode at session creation when the inputs are initializers into one
[KB·block, N] float32 constant feeding a plain MatMul (the graph then holds float32 weights:
the portable form trades memory for running anywhere). An earlier body sliced W to x's K and
multiplied by its transpose: ONNX Runtime then copied the weight every call and ran its slow
transB path, ~30× a float32 MatMul at batch 1 (bench/quant.py).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from mlpdeploy.contract import DEFAULT_BLOCK, DOMAIN, IR_VERSION
from mlpdeploy.errors import OpError

from ..onnx_body import Body, add_function, initializer, require_op, set_plugin_attributes, static_shape
from .reference import E2M1, EXTRA_INPUT, FORMATS, INT4, check_format, e4m3_table, e8m0_table

OP_TYPE = "W4A16MatMul"
OPSET_VERSION = 1
MIN_ONNX_OPSET = 18
DEFAULT_ONNX_OPSET = 21
DECLARED_ATTRIBUTES = ("format", "K", "block_size", "plugin_namespace", "plugin_version")

__all__ = ["FORMATS", "OP_TYPE", "ensure_function", "make_model", "model_from_arrays", "random_weights", "w4a16_matmul_node"]


def variant(node: ir.Node) -> tuple[str, int, int, int]:
    """(format, K, N, block) of a W4A16MatMul node, checked."""
    fmt = node.attributes.get_string("format", "")
    if fmt not in FORMATS:
        raise OpError(f"W4A16MatMul node {node.name!r} has format {fmt!r}; formats are {', '.join(FORMATS)}")
    want = 4 if fmt in EXTRA_INPUT else 3
    if len(node.inputs) != want or any(v is None for v in node.inputs):
        extra = f", {EXTRA_INPUT[fmt]}" if fmt in EXTRA_INPUT else ""
        raise OpError(f"W4A16MatMul {fmt} node {node.name!r} must have {want} inputs (x, packed, scales{extra})")
    n, kb, half = static_shape(node.inputs[1], "W4A16MatMul packed")
    block = 2 * half
    check_format(fmt, block)
    k = node.attributes.get_int("K", 0)
    if not (kb - 1) * block < k <= kb * block:
        raise OpError(f"W4A16MatMul node {node.name!r}: K={k} does not fit {kb} blocks of {block}")
    return fmt, k, n, block


def w4a16_matmul_node(x, packed, scales, extra=None, *, fmt: str, k: int, name: str | None = None) -> ir.Node:
    """A `mlpdeploy::W4A16MatMul` node (not in any graph): output x's dtype, shape [..., N]."""
    inputs = [x, packed, scales] + ([extra] if extra is not None else [])
    node = ir.Node(DOMAIN, OP_TYPE, inputs, name=name, overload=fmt,
                   attributes=[ir.AttrString("format", fmt), ir.AttrInt64("K", k), ir.AttrInt64("block_size", 0)])
    _, _, n, block = variant(node)
    node.attributes["block_size"] = ir.AttrInt64("block_size", block)
    set_plugin_attributes(node)
    out = node.outputs[0]
    if x.dtype is not None:  # (an inlined function body's values carry no type: nor does the output then)
        out.dtype = x.dtype
    if x.shape is not None:
        out.shape = ir.Shape([*x.shape[:-1], n])
    if name:
        out.name = f"{name}_output"
    return node


def ensure_function(model: ir.Model, node: ir.Node) -> None:
    """Add the model-local function `node` resolves to (once) and the `mlpdeploy` opset import."""
    require_op(node, OP_TYPE)
    fmt = variant(node)[0]
    add_function(model, node, OP_TYPE, OPSET_VERSION, fmt, lambda opset: build_function(fmt, opset))


def build_function(fmt: str, onnx_opset: int) -> ir.Function:
    """The FunctionProto (as an ir.Function) of W4A16MatMul in format `fmt`."""
    if onnx_opset < MIN_ONNX_OPSET:
        raise OpError(f"W4A16MatMul's function body needs ONNX opset >= {MIN_ONNX_OPSET} (BitwiseAnd), the model has {onnx_opset}")
    if fmt not in FORMATS:
        raise OpError(f"unknown W4A16MatMul format {fmt!r}; formats are {', '.join(FORMATS)}")
    names = ["x", "packed", "scales"] + ([EXTRA_INPUT[fmt]] if fmt in EXTRA_INPUT else [])
    body = Body(names)
    x, packed, scales = body.inputs[:3]

    def table(values) -> ir.Value:
        return body.op("Constant", value=ir.tensor(np.asarray(values, np.float32)))

    def u8(v: int) -> ir.Value:
        return body.op("Constant", value=ir.tensor(np.array(v, np.uint8)))

    last = body.ints([-1])
    lo = body.op("Unsqueeze", body.op("BitwiseAnd", packed, u8(15)), last)
    hi = body.op("Unsqueeze", body.op("BitShift", packed, u8(4), direction="RIGHT"), last)
    codes = body.op("Reshape", body.op("Concat", lo, hi, axis=-1), body.ints([0, 0, -1]))
    if fmt == "int4asym":
        zero = body.op("Unsqueeze", body.to_float(body.inputs[3]), last)
        values = body.op("Sub", body.to_float(codes), zero)
    else:
        values = body.op("Gather", table(INT4 if fmt == "int4" else E2M1), body.op("Cast", codes, to=ir.DataType.INT64.value))
    if fmt == "nvfp4":
        scale = body.op("Mul", body.op("Gather", table(e4m3_table().numpy()), body.op("Cast", scales, to=ir.DataType.INT64.value)),
                        body.to_float(body.inputs[3]))
    elif fmt == "mxfp4":
        scale = body.op("Gather", table(e8m0_table().numpy()), body.op("Cast", scales, to=ir.DataType.INT64.value))
    else:
        scale = body.to_float(scales)
    w = body.op("Reshape", body.op("Mul", values, body.op("Unsqueeze", scale, last)), body.ints([0, -1]))
    w = body.op("Transpose", w, perm=[1, 0])  # [KB·block, N]: all of it folds to one constant
    # x is zero-padded to whole blocks rather than W sliced to K: a slice by x's runtime K would
    # copy the weight every call, and the padded rows decode to zeros (0 · 0 adds nothing)
    pad = body.op("Sub", body.op("Shape", w, start=0, end=1), body.op("Shape", x, start=-1))
    xp = body.op("Pad", body.to_float(x), body.op("Concat", body.ints([0]), pad, axis=0), body.op("Constant", value=ir.tensor(np.array(0, np.float32))),
                 last)
    y = body.op("CastLike", body.op("MatMul", xp, w), x)
    return body.function(y, OP_TYPE, fmt, onnx_opset, DECLARED_ATTRIBUTES)


def random_weights(k: int, n: int, fmt: str = "int4", block: int = 0, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random storage for a [K, N] weight in `fmt`: packed codes, scales (valid codes of
    moderate size), and the global scale or zero points."""
    block = block or DEFAULT_BLOCK.get(fmt, 0)
    check_format(fmt, block)
    rng = np.random.default_rng(seed)
    kb = -(-k // block)
    arrays = {"packed": rng.integers(0, 256, (n, kb, block // 2), dtype=np.uint8)}
    if fmt == "nvfp4":
        arrays["scales"] = rng.integers(0x30, 0x50, (n, kb), dtype=np.uint8)  # E4M3 0.125 .. 2
        arrays["global_scale"] = np.array([0.05], np.float32)
    elif fmt == "mxfp4":
        arrays["scales"] = rng.integers(120, 125, (n, kb), dtype=np.uint8)  # 2^-7 .. 2^-3
    else:
        arrays["scales"] = (rng.random((n, kb)) * 0.02 + 0.005).astype(np.float32)
        if fmt == "int4asym":
            arrays["zero_points"] = rng.integers(0, 16, (n, kb), dtype=np.uint8)
    return arrays


def make_model(in_features: int, out_features: int, *, fmt: str = "int4", block: int = 0, rank: int = 2, dtype: str = "float32",
               seed: int = 0, onnx_opset: int = DEFAULT_ONNX_OPSET) -> ir.Model:
    """A standalone model of one W4A16MatMul node with random storage (`random_weights`)."""
    return model_from_arrays(random_weights(in_features, out_features, fmt, block, seed), fmt=fmt, k=in_features, rank=rank,
                             dtype=dtype, onnx_opset=onnx_opset)


def model_from_arrays(arrays: dict[str, np.ndarray], *, fmt: str, k: int, rank: int = 2, dtype: str = "float32",
                      onnx_opset: int = DEFAULT_ONNX_OPSET) -> ir.Model:
    """A standalone model of one W4A16MatMul node: input `x` [..., K] in `dtype`, `arrays` =
    packed, scales (and global_scale / zero_points) as initializers in that order, output `y`."""
    np_dtype = np.dtype(dtype)
    x = ir.Value(name="x", shape=ir.Shape([*(f"dim{i}" for i in range(rank - 1)), k]), type=ir.TensorType(ir.DataType.from_numpy(np_dtype)))
    weights = [initializer(name, array) for name, array in arrays.items()]
    node = w4a16_matmul_node(x, *weights, fmt=fmt, k=k, name="w4a16_matmul")
    node.outputs[0].name = "y"
    graph = ir.Graph([x], node.outputs, nodes=[node], initializers=weights, opset_imports={"": onnx_opset}, name="w4a16_matmul")
    model = ir.Model(graph, ir_version=IR_VERSION, producer_name="mlpdeploy")
    ensure_function(model, node)
    return model
