"""`--ort-kernels`: GroupQueryAttention nodes of a cached decoder run mlpdeploy's CachedAttention kernel (plugins/cached_attention).

ONNX Runtime 1.32's GroupQueryAttention costs ~24 µs per SmolLM2-135M layer for one decode row and
~13× that for 16 rows, for a few hundred kFLOP a row (per-head GEMM calls, transposes and
temporaries). mlpdeploy's kernel computes the same attention per (row, kv head) on ONNX Runtime's
own intra-op threads, the query heads of one kv head together (plugins/cached_attention/README.md).

After ONNX Runtime has written the optimized model, each GroupQueryAttention node of the subset the
kernel takes becomes `mlpdeploy::CachedAttention` with the same inputs (less the empty ones) and
num_heads, kv_num_heads, scale: float32, packed QKV, rotary inside (`do_rotary` 1, rotate-half), past
and present cache, `position_ids` and `query_seqlens` given, `attention_bias` given or not, and every
other feature off (no sliding window, softcap, smooth softmax, head sink, quantized cache, q/k norm
or qk output). The model also gets the op's function body, that GroupQueryAttention node, so the
artifact still runs in stock ONNX Runtime. Other nodes keep GroupQueryAttention (`kernel_refusal`
says why).

When every attention node became CachedAttention and none takes an attention bias but the plain
causal + padding mask (`passes/compact_mask.py`, proven equal to the model's own: a row of a ragged
step holds no padding, so it masks nothing the kernel attends), the graph also gets a `token_rows` input (int32 [tokens], an initializer of no elements by default, so callers
that do not feed it run as before) wired to every node: fed, one run attends tokens of many cache
rows, each row its own count — a prefill chunk and every other sequence's decode token in one
step (the kernel's ragged mode; `runtime.step.Stepper.step_segments`, the scheduler's fused
prefill).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
from onnx import helper

from mlpdeploy.backends.onnxruntime.passes.compact_mask import BIAS_NAME
from mlpdeploy.contract import DOMAIN, MS_DOMAIN, TOKEN_ROWS
from mlpdeploy.plugins.cached_attention.onnx_function import GQA_INPUTS, INPUTS, OP, cached_attention_function

# GroupQueryAttention attributes the kernel does not read, each with the values that leave its feature off
# (absent = the schema default, which is off).
OFF = {
    "do_rotary": (1,),                 # rotary inside: the kernel always rotates (a node without it stays GQA)
    "rotary_interleaved": (0,),        # rotate-half only
    "causal": (1,),
    "local_window_size": (-1,),        # no sliding window
    "sliding_window_cache": (0,),
    "softcap": (0.0,),
    "smooth_softmax": (-1, 0),
    "qk_output": (0,),
    "k_quant_type": (b"NONE", "NONE"),
    "v_quant_type": (b"NONE", "NONE"),
}
REQUIRED = {"do_rotary"}  # must be present (with an OFF value), not defaulted
IGNORED = {"num_heads", "kv_num_heads", "scale", "kv_cache_bit_width", "qk_norm_epsilon", "q_norm_epsilon", "k_norm_epsilon"}
MAX_HEAD_SIZE = 256  # the kernel's D / 16 <= 16


def _float_tensors(model: onnx.ModelProto) -> set[str]:
    """Names of the float32 tensors the graph declares (initializers, inputs, value infos)."""
    names = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    for info in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        if info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            names.add(info.name)
    return names


def kernel_refusal(node: onnx.NodeProto, attrs: dict, floats: set[str], head_sizes: dict[str, int]) -> str | None:
    """Why CachedAttention cannot compute `node` (a GroupQueryAttention node with attributes `attrs`), or None when it can.
    `floats`: float32 tensor names; `head_sizes`: cos_cache initializer name → head size (2 × its width)."""
    inputs = list(node.input) + [""] * (len(GQA_INPUTS) - len(node.input))
    if len(node.input) > len(GQA_INPUTS):
        return "more inputs than GroupQueryAttention has"
    for name, given in zip(GQA_INPUTS, inputs):
        if bool(name) != bool(given) and name != "attention_bias":
            return f"input {name or 'key/value/head_sink/k_scale/v_scale/q_norm/k_norm'} is {'absent' if name else 'given'}"
    outputs = list(node.output)
    if len(outputs) < 3 or not all(outputs[:3]) or any(outputs[3:]):
        return "not exactly output, present_key and present_value"
    for key in REQUIRED:
        if key not in attrs:
            return f"attribute {key} is absent"
    for key, value in attrs.items():
        if key in OFF and value not in OFF[key]:
            return f"{key} = {value!r} (the kernel takes {OFF[key]})"
        if key not in OFF and key not in IGNORED:
            return f"attribute {key} is not one the kernel knows"
    heads, kv_heads = attrs.get("num_heads", 0), attrs.get("kv_num_heads", 0)
    if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
        return f"num_heads {heads} is not a multiple of kv_num_heads {kv_heads}"
    head_size = head_sizes.get(inputs[7])
    if head_size is None:
        return "cos_cache is not a float32 initializer (its width gives the head size)"
    if head_size % 16 or head_size > MAX_HEAD_SIZE:
        return f"head size {head_size} is not a multiple of 16 up to {MAX_HEAD_SIZE}"
    if inputs[3] not in floats:  # GroupQueryAttention's one type T: query, cache and tables share it
        return "past_key is not declared float32"
    return None


def attention_rewrite(model: onnx.ModelProto) -> tuple[dict[str, int], list[onnx.FunctionProto]]:
    """Rewrite `model`'s GroupQueryAttention nodes the kernel takes (see the module docstring), in memory; returns
    (op type → nodes rewritten, the op's function). `kernels.use_kernel_ops` runs it on a saved model."""
    floats = _float_tensors(model)
    head_sizes = {t.name: 2 * t.dims[1] for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2}
    rewritten, kept = [], 0
    for node in model.graph.node:
        if node.domain != MS_DOMAIN or node.op_type != "GroupQueryAttention":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if kernel_refusal(node, attrs, floats, head_sizes) is not None:
            kept += 1
            continue
        given = dict(zip(GQA_INPUTS, list(node.input) + [""] * (len(GQA_INPUTS) - len(node.input))))
        inputs = [given.get(name, "") for name in INPUTS]
        while not inputs[-1]:
            inputs.pop()
        outputs = list(node.output[:3])
        node.domain, node.op_type = DOMAIN, OP
        del node.input[:], node.output[:], node.attribute[:]
        node.input.extend(inputs)
        node.output.extend(outputs)
        node.attribute.extend(helper.make_attribute(key, attrs[key]) for key in ("num_heads", "kv_num_heads", "scale") if key in attrs)
        rewritten.append(node)
    if not rewritten:
        return {}, []
    if not kept and all(plain_bias(node) for node in rewritten):
        add_token_rows(model, rewritten)
    return {OP: len(rewritten)}, [cached_attention_function()]


def plain_bias(node: onnx.NodeProto) -> bool:
    """Whether a CachedAttention node takes no attention bias, or the causal + padding mask `compact_mask` rebuilt."""
    index = INPUTS.index("attention_bias")
    bias = node.input[index] if len(node.input) > index else ""
    return not bias or bias.startswith(BIAS_NAME)


def add_token_rows(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> None:
    """The `token_rows` graph input (an empty int32 initializer by default), as input 10 of every node (module docstring)."""
    if any(i.name == TOKEN_ROWS for i in model.graph.input):
        return
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(0, np.int32), TOKEN_ROWS))
    model.graph.input.append(helper.make_tensor_value_info(TOKEN_ROWS, onnx.TensorProto.INT32, ["tokens"]))
    index = INPUTS.index(TOKEN_ROWS)
    for node in nodes:
        node.input.extend([""] * (index - len(node.input)) + [TOKEN_ROWS])
