"""`genai_config.json` beside a KV-cache build, so onnxruntime-genai's C++ generator can drive it.

mlpdeploy's cached decoders already take and give what onnxruntime-genai's decoder-only models
do (`input_ids`, `attention_mask`, `position_ids`, `past_key_values.N.key|value` in,
`logits`, `present.N.key|value` out, cache [batch, kv_heads, length, head_dim]); the config names
them and states the shapes, the token ids and whether past and present share one buffer (graphs
whose attention is GroupQueryAttention, `CacheLayout.shared_buffer`). A build whose cache
layers are not 0..n-1 (attention dropped from some blocks) gets no config: the generator
numbers cache inputs by layer, with no gaps.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx_ir as ir

from mlpdeploy.contract import ATTENTION_MASK, INPUT_IDS, LOGITS, PAST_TEMPLATE, POSITION_IDS, PRESENT_TEMPLATE, cache_printf
from mlpdeploy.model.manifest import Manifest

CONFIG_NAME = "genai_config.json"


def genai_config(model: ir.Model, manifest: Manifest, model_file: str, session: dict) -> tuple[dict | None, str]:
    """The config for the built `model` (file name `model_file`, ONNX Runtime `session` settings),
    or None and why not."""
    layout = manifest.cache
    if layout is None:
        return None, "the model has no KV cache"
    layers = layout["layers"]
    if layers != list(range(len(layers))):
        return None, f"cache layers {layers} are not 0..{len(layers) - 1}: onnxruntime-genai numbers cache inputs without gaps"
    names = {v.name for v in model.graph.inputs}
    if not {INPUT_IDS, ATTENTION_MASK} <= names:
        return None, "the graph lacks input_ids or attention_mask"
    logits = next((v for v in model.graph.outputs if v.name == LOGITS), None)
    vocab = logits.shape[-1] if logits is not None and logits.shape is not None else None
    if not isinstance(vocab, int):
        return None, "the logits output has no fixed vocabulary size"
    head_dim, kv_heads = layout["head_dim"], layout["kv_heads"]
    hidden = _hidden_size(model)
    heads = _attention_heads(model) or (hidden // head_dim if hidden else kv_heads)
    tokens = _token_ids(manifest)
    inputs = {"input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK,
              "past_key_names": cache_printf(PAST_TEMPLATE, "key"), "past_value_names": cache_printf(PAST_TEMPLATE, "value")}
    if POSITION_IDS in names:
        inputs["position_ids"] = POSITION_IDS
    session_options = {"log_id": "onnxruntime-genai", "provider_options": [],
                       "graph_optimization_level": session.get("graph_optimization_level", "ORT_ENABLE_ALL")}
    if session.get("intra_op_num_threads"):
        session_options["intra_op_num_threads"] = session["intra_op_num_threads"]
    if session.get("custom_ops_libraries"):
        session_options["custom_ops_library"] = session["custom_ops_libraries"][0]
    decoder = {
        "filename": model_file,
        "session_options": session_options,
        "head_size": head_dim,
        **({"hidden_size": hidden} if hidden else {}),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "num_hidden_layers": len(layers),
        "inputs": inputs,
        "outputs": {"logits": LOGITS, "present_key_names": cache_printf(PRESENT_TEMPLATE, "key"), "present_value_names": cache_printf(PRESENT_TEMPLATE, "value")},
    }
    config = {
        "model": {"type": "llama", "context_length": layout["max_positions"], "vocab_size": vocab, **tokens, "decoder": decoder},
        "search": {"max_length": layout["max_positions"], "do_sample": False, "num_beams": 1,
                   "past_present_share_buffer": bool(layout.get("shared_buffer"))},
    }
    return config, ""


def write_genai_config(directory: Path, config: dict) -> Path:
    path = Path(directory) / CONFIG_NAME
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def _attention_heads(model: ir.Model) -> int | None:
    for node in model.graph:
        if node.op_type in ("GroupQueryAttention", "MultiHeadAttention", "CachedAttention") and "num_heads" in node.attributes:
            return node.attributes["num_heads"].as_int()
    return None


def _hidden_size(model: ir.Model) -> int | None:
    """The width of the token embedding: the table a Gather reads with input_ids."""
    ids = next((v for v in model.graph.inputs if v.name == INPUT_IDS), None)
    for use, index in ids.uses() if ids is not None else ():
        if use.op_type == "Gather" and index == 1:
            table = use.inputs[0]
            if table is not None and table.shape is not None and len(table.shape) == 2 and isinstance(table.shape[1], int):
                return table.shape[1]
    return None


def _token_ids(manifest: Manifest) -> dict[str, int]:
    """bos/eos/pad ids from a Hugging Face source's config files (the zoo's byte-level models have
    none: pad 0, and the generator stops only at max_length)."""
    found: dict[str, int] = {}
    source = Path(manifest.source)
    if manifest.kind == "hf" and source.is_dir():
        for name in ("config.json", "generation_config.json"):
            path = source / name
            if path.is_file():
                data = json.loads(path.read_text())
                for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                    value = data.get(key)
                    if isinstance(value, list):
                        value = value[0] if value else None
                    if isinstance(value, int):
                        found[key] = value
    found.setdefault("pad_token_id", found.get("eos_token_id", 0))
    return found
