"""Hugging Face transformers checkpoint directories as ModelBundles (extra `hf`).

A causal LM (…ForCausalLM: LLaMA, Mistral, Qwen2, Phi-3, …) is exported as
`input_ids → logits`, or with `--kv-cache` as a cached decoder (`mlpdeploy.model.kv_cache`);
an encoder (BERT family) as `input_ids, attention_mask → last_hidden_state`; an image classifier
(…ForImageClassification: ViT, ConvNeXt, …) as `pixel_values → logits`.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import torch

from mlpdeploy.errors import MlpdeployError, first_line, require
from mlpdeploy.model.bundle import InputSpec, ModelBundle
from mlpdeploy.model.kv_cache import CacheLayout

EXAMPLE_BATCH, EXAMPLE_SEQ = 2, 8


class CausalLMLogits(torch.nn.Module):
    """`input_ids → logits` without the KV cache; with `forward_cached`, also a cached decoder
    (`mlpdeploy.model.kv_cache`) whose cache is a transformers DynamicCache filled from `past`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits

    def cache_layout(self) -> CacheLayout:
        config = self.model.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return CacheLayout(
            layers=list(range(config.num_hidden_layers)),
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            max_positions=int(getattr(config, "max_position_embeddings", 0) or 4096),
            position_ids=True,
        )

    def forward_cached(self, input_ids, attention_mask, position_ids, past):
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer, (keys, values) in enumerate(past):
            cache.update(keys, values, layer)
        # transformers >= 5.24 names the cache argument `cache` (`past_key_values` is deprecated)
        key = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True, **{key: cache})
        returned = getattr(out, key, None) or out.past_key_values
        return out.logits, [(layer.keys, layer.values) for layer in returned.layers]


class EncoderHidden(torch.nn.Module):
    """`input_ids, attention_mask → last_hidden_state`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class ImageLogits(torch.nn.Module):
    """`pixel_values → logits`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def _image_classifier(model: torch.nn.Module, config) -> tuple[torch.nn.Module, dict, list[InputSpec], list[str]]:
    size = getattr(config, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)[:2]
    shape = [EXAMPLE_BATCH, int(getattr(config, "num_channels", 3)), int(height), int(width)]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    spec = InputSpec("pixel_values", "float32", ["batch", *shape[1:]], shape)
    return ImageLogits(model), {"pixel_values": x}, [spec], ["logits"]


def load_hf_dir(path: Path) -> ModelBundle:
    """Load a transformers checkpoint directory (config.json + weights) into a ModelBundle."""
    transformers = require("transformers", "hf", "Hugging Face model directories")
    transformers.utils.logging.disable_progress_bar()
    try:
        config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise MlpdeployError(f"{path}/config.json cannot be read by transformers: {first_line(exc)}") from None
    architectures = config.architectures or []
    causal = any(a.endswith("ForCausalLM") for a in architectures) or getattr(config, "is_decoder", False)
    image = not causal and any(a.endswith("ForImageClassification") for a in architectures)
    auto = (transformers.AutoModelForCausalLM if causal else transformers.AutoModelForImageClassification if image
            else transformers.AutoModel)
    try:
        model = auto.from_pretrained(str(path), local_files_only=True, dtype=torch.float32, attn_implementation="eager")
    except Exception as exc:
        raise MlpdeployError(f"cannot load weights from {path}: {first_line(exc)}; the directory needs config.json and model.safetensors (or pytorch_model.bin)") from None
    model.eval()
    vocab = int(getattr(config, "vocab_size", 0) or 2)  # an image classifier has none
    max_pos = int(getattr(config, "max_position_embeddings", 0) or 4096)
    ids = torch.randint(0, vocab, (EXAMPLE_BATCH, EXAMPLE_SEQ), generator=torch.Generator().manual_seed(0))
    ids_spec = InputSpec("input_ids", "int64", ["batch", "seq"], [EXAMPLE_BATCH, EXAMPLE_SEQ], low=0, high=vocab)
    if causal:
        module, example, specs, outputs = CausalLMLogits(model), {"input_ids": ids}, [ids_spec], ["logits"]
    elif image:
        module, example, specs, outputs = _image_classifier(model, config)
    else:
        mask = torch.ones_like(ids)
        mask_spec = InputSpec("attention_mask", "int64", ["batch", "seq"], [EXAMPLE_BATCH, EXAMPLE_SEQ], fill=1)
        module, example = EncoderHidden(model), {"input_ids": ids, "attention_mask": mask}
        specs, outputs = [ids_spec, mask_spec], ["last_hidden_state"]
    module.eval()
    return ModelBundle(
        module=module,
        example_inputs=example,
        inputs=specs,
        output_names=outputs,
        source=str(path),
        kind="hf",
        dim_ranges={} if image else {"seq": (1, max_pos)},
        metadata={"architectures": architectures, "model_type": config.model_type, "config": json.loads(config.to_json_string())},
    )

