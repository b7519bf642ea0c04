"""A classification task on a user's image folder (`--data DIR`, the ImageFolder layout DIR/CLASS/IMAGE).

Classes are the non-hidden sub-folders holding images, in sorted order (torchvision's ImageFolder
convention); when every folder name is one of the model's own labels (a Hugging Face config's
`label2id`, compared case-insensitively), the model's ids are used instead. Identical image files
are kept once. Within each class, 1 image in `EVAL_EVERY` is held out (at least one of a class with
two or more): those whose SHA-256 is smallest. Images are decoded and preprocessed
(`mlpdeploy.model.image_preprocess`) batch by batch. Metric: accuracy, plus top-1 agreement with torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from mlpdeploy.errors import MlpdeployError, first_line
from mlpdeploy.model.bundle import ModelBundle
from mlpdeploy.model.data import Batch, Task
from mlpdeploy.model.image_preprocess import Preprocess, resolve_preprocess

EVAL_EVERY = 5
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


@dataclass(frozen=True, eq=False)
class ImageTask(Task):
    """Accuracy on held-out images of a user's class folders."""

    name: str = "data"
    kind: str = "classification"
    metric: str = "accuracy"
    input_name: str = "pixel_values"
    label_key: str = "labels"
    preprocess: Preprocess | None = None
    calibration: tuple[tuple[Path, int], ...] = field(default=(), repr=False)  # (image, label)
    evaluation: tuple[tuple[Path, int], ...] = field(default=(), repr=False)
    source: str = ""
    info: dict = field(default_factory=dict)

    def load(self, items) -> Batch:
        """Decode and preprocess (image, label) pairs into a batch with labels."""
        from PIL import Image

        images = []
        for path, _ in items:
            try:
                with Image.open(path) as image:
                    images.append(self.preprocess(image))
            except (OSError, ValueError) as exc:
                raise MlpdeployError(f"{path} cannot be read as an image: {first_line(exc)}; remove it from --data") from None
        return {self.input_name: np.stack(images), self.label_key: np.asarray([label for _, label in items], np.int64)}

    def calibration_batches(self, n: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        for batch in self.labeled_calibration_batches(n, batch_size, seed):
            yield {self.input_name: batch[self.input_name]}

    def labeled_calibration_batches(self, n: int, batch_size: int, seed: int = 0) -> Iterator[Batch]:
        rng = np.random.default_rng(seed)
        for _ in range(n):
            yield self.load([self.calibration[i] for i in rng.integers(0, len(self.calibration), size=batch_size)])

    def eval_batches(self, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        items = self.evaluation[:limit]
        for start in range(0, len(items), batch_size):
            yield self.load(items[start:start + batch_size])

    def eval_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        batch = self.load(self.evaluation)
        return batch[self.input_name], batch[self.label_key]

    def _score(self, logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
        return float((logits.argmax(-1) == labels).sum()), labels.size

    def _reduce(self, scores: list[tuple[float, int]]) -> float:
        return sum(s for s, _ in scores) / sum(c for _, c in scores)

    def calibration_source(self) -> str:
        return self.source

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "metric": self.metric, "eval_samples": len(self.evaluation),
                "calibration_samples": len(self.calibration), "preprocess": self.preprocess.to_json(), **self.info}


def image_classes(path: Path) -> dict[str, list[Path]]:
    """Class folder name → its image files (sorted, sub-folders included), for the non-hidden folders that hold images."""
    classes = {}
    for folder in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in f.relative_to(folder).parts))
        if files:
            classes[folder.name] = files
    return classes


def model_label_ids(bundle: ModelBundle, names: list[str]) -> dict[str, int] | None:
    """Folder name → the model's own label id, when its config names every folder; else None."""
    label2id = (bundle.metadata.get("config") or {}).get("label2id") or {}
    lowered = {str(k).lower(): int(v) for k, v in label2id.items()}
    if names and all(n.lower() in lowered for n in names):
        return {n: lowered[n.lower()] for n in names}
    return None


def split_images(classes: dict[str, list[Path]], labels: dict[str, int]) -> tuple[list, list, str]:
    """(calibration items, held-out items, SHA-256 of the data): per class, the `1 / EVAL_EVERY`
    images with the smallest SHA-256 held out; identical files kept once."""
    digest, seen = hashlib.sha256(), set()
    calibration, held_out = [], []
    for name, files in classes.items():
        keyed = []
        for file in files:
            key = hashlib.sha256(file.read_bytes()).hexdigest()
            digest.update(f"{name}/{file.name}\0{key}".encode())
            if key not in seen:
                seen.add(key)
                keyed.append((key, file))
        keyed.sort()
        count = max(1, len(keyed) // EVAL_EVERY) if len(keyed) >= 2 else 0
        kept, held = {f for _, f in keyed}, {f for _, f in keyed[:count]}
        calibration += [(f, labels[name]) for f in files if f in kept and f not in held]
        held_out += [(f, labels[name]) for f in files if f in held]
    return calibration, held_out, digest.hexdigest()


def image_task(bundle: ModelBundle, path: Path, data, source: str) -> ImageTask:
    """The classification task on an image folder for an image model (`data`: DataOptions)."""
    classes = image_classes(path)
    if not classes:
        raise MlpdeployError(f"--data {path} has no class folders with images; use the ImageFolder layout DATA/CLASS/IMAGE")
    preprocess = resolve_preprocess(bundle, data.image_size, data.mean, data.std)
    names = list(classes)
    own = model_label_ids(bundle, names)
    labels = own or {n: i for i, n in enumerate(names)}
    calibration, held_out, _ = split_images(classes, labels)
    if not calibration or not held_out:
        raise MlpdeployError(f"--data {path} holds too few distinct images to hold any out (a class needs at least 2); add images")
    info = {"classes": labels, "labels_from": "the model's label2id" if own else "sorted folder names"}
    return ImageTask(name=f"data:{path.name}", input_name=bundle.inputs[0].name, preprocess=preprocess,
                     calibration=tuple(calibration), evaluation=tuple(held_out), source=source, info=info)
