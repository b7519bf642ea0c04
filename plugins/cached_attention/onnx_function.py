"""`mlpdeploy::CachedAttention(query, past_key, past_value, seqlens_k, total_sequence_length, cos_cache,
sin_cache, position_ids[, attention_bias[, query_seqlens[, token_rows]]]) <num_heads, kv_num_heads, scale>`
as an ONNX function whose body is the com.microsoft GroupQueryAttention node it stands for (packed QKV,
rotary inside, rotate-half): stock ONNX Runtime inlines the body; with mlpdeploy's kernel library
registered, the kernel (ort_kernel.c) runs instead.

The body does not read token_rows (GroupQueryAttention has no ragged mode), so it computes the op
only while token_rows is absent or empty (the normal mode); a non-empty token_rows (the kernel's
ragged mode) needs the kernel library."""

from __future__ import annotations

import onnx
from onnx import helper

from mlpdeploy.contract import DOMAIN, MS_DOMAIN

OP = "CachedAttention"
INPUTS = ("query", "past_key", "past_value", "seqlens_k", "total_sequence_length", "cos_cache", "sin_cache", "position_ids",
          "attention_bias", "query_seqlens", "token_rows")
OUTPUTS = ("output", "present_key", "present_value")
ATTRIBUTES = ("num_heads", "kv_num_heads", "scale")
# GroupQueryAttention's 17 inputs: where each of the op's inputs goes ("" = absent: key and value come packed in query)
GQA_INPUTS = ("query", "", "", "past_key", "past_value", "seqlens_k", "total_sequence_length", "cos_cache", "sin_cache", "position_ids",
              "attention_bias", "", "", "", "", "", "query_seqlens")


def cached_attention_function() -> onnx.FunctionProto:
    """The function definition of CachedAttention; num_heads, kv_num_heads and scale are the calling node's attributes."""
    node = helper.make_node("GroupQueryAttention", list(GQA_INPUTS), list(OUTPUTS), domain=MS_DOMAIN, do_rotary=1, rotary_interleaved=0)
    node.attribute.extend([helper.make_attribute_ref("num_heads", onnx.AttributeProto.INT),
                           helper.make_attribute_ref("kv_num_heads", onnx.AttributeProto.INT),
                           helper.make_attribute_ref("scale", onnx.AttributeProto.FLOAT)])
    return helper.make_function(DOMAIN, OP, list(INPUTS), list(OUTPUTS), [node], [helper.make_opsetid(MS_DOMAIN, 1)],
                                attributes=list(ATTRIBUTES))
