"""What every zoo builder shares: seeded construction, bundles for token and image models,
and loading a committed checkpoint (safetensors, config in its metadata)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import InputSpec, ModelBundle, TrainedMetrics

CHECKPOINTS = Path(__file__).parent / "checkpoints"
CARDS = Path(__file__).parent / "cards"
EXAMPLE_BATCH, EXAMPLE_SEQ = 2, 8  # never 1: torch.export specializes size-1 dims

M = TypeVar("M", bound=nn.Module)


def seeded(factory: Callable[[], M], seed: int = 0) -> M:
    """Build a module under a fixed seed (same weights every time) without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = factory()
    module.eval()
    return module


def token_bundle(module: nn.Module, vocab_size: int, max_positions: int, task: Any = None, **metadata) -> ModelBundle:
    """A bundle for a decoder taking `input_ids` [batch, seq] int64 and returning `logits`."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab_size, (EXAMPLE_BATCH, EXAMPLE_SEQ), generator=gen)
    spec = InputSpec("input_ids", "int64", ["batch", "seq"], [EXAMPLE_BATCH, EXAMPLE_SEQ], low=0, high=vocab_size)
    return ModelBundle(
        module=module,
        example_inputs={"input_ids": ids},
        inputs=[spec],
        output_names=["logits"],
        source="",
        kind="zoo",
        dim_ranges={"seq": (1, max_positions)},
        task=task,
        metadata=metadata,
    )


def image_bundle(module: nn.Module, in_chans: int, image_size: int, task: Any = None, **metadata) -> ModelBundle:
    """A bundle for a classifier taking `pixel_values` [batch, C, H, W] float32 and returning `logits`."""
    gen = torch.Generator().manual_seed(1)
    shape = [EXAMPLE_BATCH, in_chans, image_size, image_size]
    x = torch.randn(shape, generator=gen)
    spec = InputSpec("pixel_values", "float32", ["batch", in_chans, image_size, image_size], shape)
    return ModelBundle(
        module=module,
        example_inputs={"pixel_values": x},
        inputs=[spec],
        output_names=["logits"],
        source="",
        kind="zoo",
        task=task,
        metadata=metadata,
    )


def digits_task(config: Any):
    """The digits task sized for an image model's config (`image_size`, `in_chans`)."""
    from mlpdeploy.model.data import DigitsTask

    return DigitsTask(image_size=config.image_size, channels=config.in_chans)


def config_json(config: Any) -> str:
    return json.dumps({"class": type(config).__name__, **dataclasses.asdict(config)}, sort_keys=True)


def checkpoint_path(name: str) -> Path:
    return CHECKPOINTS / f"{name}.safetensors"


def checkpoint_metadata(name: str) -> dict[str, str]:
    """The string metadata stored in `checkpoints/NAME.safetensors` (config, metrics, …)."""
    from safetensors import safe_open

    with safe_open(str(checkpoint_path(name)), framework="pt") as f:
        return dict(f.metadata() or {})


def load_checkpoint(module: nn.Module, name: str, config: Any) -> nn.Module:
    """Load `checkpoints/NAME.safetensors` into `module`; its metadata must record `config`."""
    from safetensors.torch import load_file

    path = checkpoint_path(name)
    if not path.is_file():
        raise MlpdeployError(f"checkpoint {path} not found; train it with `python -m mlpdeploy.zoo.train {name}` (or `make models`)")
    meta = checkpoint_metadata(name)
    if meta.get("config") != config_json(config):
        raise MlpdeployError(
            f"checkpoint {path} was trained for config {meta.get('config')}, but the code builds {config_json(config)}; "
            f"retrain with `python -m mlpdeploy.zoo.train {name}`"
        )
    module.load_state_dict(load_file(str(path)), strict=True)
    module.eval()
    return module


def trained_bundle(build: Callable[..., ModelBundle], config: Any, name: str, task: Any) -> ModelBundle:
    """`build(config, task=task)` with the weights of the committed checkpoint `name`.

    `bundle.trained` gets the checkpoint's recorded metrics; `bundle.metadata` its path and card.
    """
    bundle = build(config, task=task)
    load_checkpoint(bundle.module, name, config)
    meta = checkpoint_metadata(name)
    bundle.metadata.update(checkpoint=str(checkpoint_path(name)), card=str(CARDS / f"{name}.md"))
    if "metrics" in meta:
        bundle.trained = TrainedMetrics.from_json(json.loads(meta["metrics"]))
    return bundle


def save_checkpoint(module: nn.Module, name: str, config: Any, extra: dict[str, str] | None = None,
                    directory: Path | None = None) -> Path:
    """Write `module`'s state dict as `NAME.safetensors` in `directory` (default: the package's
    checkpoints) atomically, with the config (and `extra`) in its metadata."""
    from safetensors.torch import save_file

    path = (directory or CHECKPOINTS) / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(tmp), metadata={"config": config_json(config), **(extra or {})})
    tmp.replace(path)
    return path
