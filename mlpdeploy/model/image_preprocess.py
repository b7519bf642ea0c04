"""How an image becomes a model input: the model's own preprocessing config where it has one.

In order of preference:

1. a Hugging Face image processor's `preprocessor_config.json` in the model directory (`do_resize`
   with `size` {height, width} or {shortest_edge} (and ConvNeXt's `crop_pct`), `resample`,
   `do_center_crop`/`crop_size`, `do_rescale`/`rescale_factor`, `do_normalize`/`image_mean`/`image_std`);
2. timm's `pretrained_cfg` on the model (`input_size`, `interpolation`, `crop_pct`, `mean`, `std`):
   its eval transform, shorter side resized to `floor(size / crop_pct)`, then a center crop;
3. `--image-size` (default: the model input's static height and width), `--mean`/`--std` (default
   ImageNet's, averaged for a grayscale model): a plain resize to the model's size.

Pixels are scaled to 0..1 (`rescale`), normalized per channel, and laid out [channels, height, width]
float32; a 1-channel model gets grayscale ("L"), a 3-channel one RGB.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mlpdeploy.errors import MlpdeployError, require
from mlpdeploy.model.bundle import ModelBundle

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BILINEAR, BICUBIC = 2, 3  # PIL's Image.Resampling values (what HF configs store)
TIMM_INTERPOLATION = {"nearest": 0, "bilinear": BILINEAR, "bicubic": BICUBIC, "lanczos": 1, "box": 4, "hamming": 5}


@dataclass(frozen=True)
class Preprocess:
    """resize ("exact", [h, w]) or ("shortest", s) or None, then an optional center `crop` [h, w],
    then `rescale`, then (x - mean) / std per channel."""

    resize: tuple | None
    crop: tuple[int, int] | None
    resample: int
    rescale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int
    source: str

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def size(self) -> tuple[int, int] | None:
        """The [height, width] of what comes out (None when it follows the image)."""
        if self.crop is not None:
            return tuple(self.crop)
        return tuple(self.resize[1]) if self.resize and self.resize[0] == "exact" else None

    def __call__(self, image) -> np.ndarray:
        """A PIL image → [channels, height, width] float32."""
        image = image.convert("L" if self.channels == 1 else "RGB")
        if self.resize is not None:
            how, value = self.resize
            if how == "exact":
                height, width = value
            else:
                short, long = sorted(image.size)
                scaled = int(value * long / short)
                width, height = (value, scaled) if image.width <= image.height else (scaled, value)
            image = image.resize((int(width), int(height)), resample=self.resample)
        if self.crop is not None:
            ch, cw = self.crop
            top, left = (image.height - ch) // 2, (image.width - cw) // 2
            image = image.crop((left, top, left + cw, top + ch))
        x = np.asarray(image, dtype=np.float32) * np.float32(self.rescale)
        x = x[..., None] if x.ndim == 2 else x
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def _hw(value, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    raise MlpdeployError(f"preprocessor_config.json: {what} {value!r} is not a size mlpdeploy reads ({{height, width}} or an int)")


def from_hf_config(path: Path, channels: int) -> Preprocess:
    """The preprocessing a Hugging Face image processor config describes."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MlpdeployError(f"{path} cannot be read as JSON: {exc}") from None
    resize = None
    if cfg.get("do_resize", True) and "size" in cfg:
        size = cfg["size"]
        if isinstance(size, dict) and "shortest_edge" in size:
            short = int(size["shortest_edge"])
            crop_pct = cfg.get("crop_pct")
            if crop_pct and short < 384:  # ConvNeXt's processor: resize to short / crop_pct, then crop to short
                resize, cfg = ("shortest", int(short / crop_pct)), {**cfg, "do_center_crop": True, "crop_size": short}
            else:
                resize = ("shortest", short)
        else:
            resize = ("exact", _hw(size, "size"))
    crop = _hw(cfg["crop_size"], "crop_size") if cfg.get("do_center_crop") and "crop_size" in cfg else None
    return Preprocess(
        resize=resize, crop=crop, resample=int(cfg.get("resample", BILINEAR)),
        rescale=float(cfg.get("rescale_factor", 1 / 255)) if cfg.get("do_rescale", True) else 1.0,
        mean=_channels(cfg.get("image_mean", IMAGENET_MEAN) if cfg.get("do_normalize", True) else (0.0,), channels),
        std=_channels(cfg.get("image_std", IMAGENET_STD) if cfg.get("do_normalize", True) else (1.0,), channels),
        channels=channels, source=str(path),
    )


def from_timm_cfg(cfg: dict, channels: int) -> Preprocess:
    """timm's eval transform for a model's `pretrained_cfg`."""
    size = cfg.get("test_input_size") or cfg.get("input_size") or (channels, 224, 224)
    height, width = int(size[-2]), int(size[-1])
    crop_pct = float(cfg.get("test_crop_pct") or cfg.get("crop_pct") or 0.875)
    return Preprocess(
        resize=("shortest", math.floor(min(height, width) / crop_pct)), crop=(height, width),
        resample=TIMM_INTERPOLATION.get(str(cfg.get("interpolation", "bicubic")), BICUBIC), rescale=1 / 255,
        mean=_channels(cfg.get("mean", IMAGENET_MEAN), channels), std=_channels(cfg.get("std", IMAGENET_STD), channels),
        channels=channels, source="pretrained_cfg (timm)",
    )


def _channels(values, channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in (values if isinstance(values, (list, tuple)) else [values]))
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise MlpdeployError(f"{len(values)} per-channel values {list(values)} for a model with {channels} channel(s); give {channels}")
    return values


def _default(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """ImageNet's per-channel statistics; their mean for a grayscale model (as timm does)."""
    return values if channels == len(values) else (sum(values) / len(values),)


def timm_cfg(bundle: ModelBundle) -> dict | None:
    """A timm `pretrained_cfg` on the model or one of its modules (timm sets it on every model it creates)."""
    for module in bundle.module.modules():
        cfg = getattr(module, "pretrained_cfg", None)
        if isinstance(cfg, dict) and cfg.get("input_size"):
            return cfg
    return None


def resolve_preprocess(bundle: ModelBundle, image_size: int | None, mean, std) -> Preprocess:
    """The model's preprocessing (see the module docstring); checked against its input's static size."""
    require("PIL.Image", "images", "--data image folders")
    spec = bundle.inputs[0]
    channels = spec.shape[1] if isinstance(spec.shape[1], int) else 3
    static = tuple(spec.shape[2:4]) if all(isinstance(d, int) for d in spec.shape[2:4]) else None
    directory = Path(bundle.source) if bundle.kind == "hf" else None
    if directory is not None and (directory / "preprocessor_config.json").is_file():
        pre = from_hf_config(directory / "preprocessor_config.json", channels)
    elif (cfg := timm_cfg(bundle)) is not None:
        pre = from_timm_cfg(cfg, channels)
    else:
        size = (image_size, image_size) if image_size else static
        if size is None:
            raise MlpdeployError(f"{bundle.source} has no preprocessing config and a dynamic image size; give --image-size")
        pre = Preprocess(resize=("exact", size), crop=None, resample=BILINEAR, rescale=1 / 255,
                         mean=_channels(mean or _default(IMAGENET_MEAN, channels), channels),
                         std=_channels(std or _default(IMAGENET_STD, channels), channels),
                         channels=channels, source="--image-size/--mean/--std")
    if static is not None and pre.size is not None and tuple(pre.size) != static:
        raise MlpdeployError(f"{pre.source} makes {pre.size[0]}×{pre.size[1]} images, but {bundle.source} takes "
                             f"{static[0]}×{static[1]}; give --image-size {static[0]} (or fix the config)")
    return pre
