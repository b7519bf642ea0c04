"""The one place a model's task comes from: the user's `--data`, else the zoo model's own task.

`resolve_task(bundle, DataOptions(path=...))` reads the data, checks it suits the model, and
builds a `Task` (the interface of `mlpdeploy.model.data`):

| data                                   | model              | task                                   |
|----------------------------------------|--------------------|----------------------------------------|
| .txt/.md/.py, .jsonl, a folder of them | causal LM          | TextLMTask: perplexity, top-1 agreement |
| the same                               | encoder (input_ids + attention_mask) | EncoderTask: cosine of the mean-pooled output vs torch |
| a folder of class folders of images    | image classifier   | ImageTask: accuracy, top-1 agreement    |
| .npz / Polygraphy inputs JSON          | any                | ArrayTask: top-1 agreement with torch   |

`attach_task(bundle, data)` is the bundle with that task, which every analysis, planner and
validation reads as `bundle.task`. Errors are one line naming the path and the fix.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.bundle import ModelBundle
from mlpdeploy.model.data import Task
from mlpdeploy.model.documents import JSONL_SUFFIX, TEXT_SUFFIXES, text_files
from mlpdeploy.model.image_task import IMAGE_SUFFIXES, image_classes, image_task

ARRAY_SUFFIXES = (".npz", ".json")
DEFAULT_SEQ_LEN = {"causal-lm": 256, "encoder": 128}
MAX_REFERENCE_EVAL = 256  # held-out samples whose torch reference an encoder task computes up front


@dataclass(frozen=True)
class DataOptions:
    """What `--data` and its options say: the path; `seq_len` tokens per text window (default 256 for
    causal LMs, 128 for encoders, at most the model's positions); `samples` calibration samples;
    for images without a preprocessing config, `image_size` and per-channel `mean`/`std`."""

    path: Path | None = None
    seq_len: int | None = None
    samples: int = 64
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def model_kind(bundle: ModelBundle) -> str:
    """"causal-lm", "encoder", "image" or "other", from the model's inputs."""
    names = [s.name for s in bundle.inputs]
    if "input_ids" in names:
        if bundle.cache is not None or names == ["input_ids"]:
            return "causal-lm"
        if "attention_mask" in names:
            return "encoder"
    floats4 = [s for s in bundle.inputs if s.dtype.startswith(("float", "bfloat")) and len(s.shape) == 4]
    if len(bundle.inputs) == 1 and floats4:
        return "image"
    return "other"


def data_kind(path: Path) -> str:
    """"text", "images" or "arrays" for a `--data` path, or a one-line error for what is not data."""
    if not path.exists():
        raise MlpdeployError(f"--data {path} does not exist; give a text file (.txt/.md/.py/.jsonl), a folder, or .npz/.json arrays")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (*TEXT_SUFFIXES, JSONL_SUFFIX):
            return "text"
        if suffix in ARRAY_SUFFIXES:
            return "arrays"
        if suffix in IMAGE_SUFFIXES:
            raise MlpdeployError(f"--data {path} is a single image; give a folder of class folders (ImageFolder layout: DATA/CLASS/IMAGE)")
        raise MlpdeployError(f"--data {path}: unsupported file type {suffix or '(no suffix)'}; "
                             "--data takes .txt/.md/.py/.jsonl text, .npz/.json arrays, or a folder")
    if image_classes(path):
        return "images"
    if any(_is_image(c) for c in path.iterdir()):
        raise MlpdeployError(f"--data {path} holds images but no class folders; put each class's images in its own folder "
                             "(ImageFolder layout: DATA/CLASS/IMAGE)")
    if text_files(path):
        return "text"
    raise MlpdeployError(f"--data {path} holds no usable files: give .txt/.md/.py/.jsonl text, a folder of image class folders, "
                         "or .npz/.json arrays")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def data_sha256(path: Path) -> str:
    """SHA-256 over a file's bytes, or over a folder's files (relative path and contents, sorted)."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.relative_to(path).parts)):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()


def data_source(path: Path, sha256: str) -> str:
    """plan.json's `calibration.source` for data at `path`."""
    return f"data:{path}, sha256:{sha256}"


def resolve_task(bundle: ModelBundle, data: DataOptions | None = None) -> Task | None:
    """The task that judges `bundle`: built from `data.path` when given, else the bundle's own (zoo) task."""
    if data is None or data.path is None:
        return bundle.task
    path = Path(data.path)
    kind = data_kind(path)
    model = model_kind(bundle)
    if data.samples < 1:
        raise MlpdeployError(f"--samples must be at least 1, got {data.samples}")
    if kind == "arrays":
        return _array_task(bundle, path)
    if kind == "text":
        if model not in ("causal-lm", "encoder"):
            raise MlpdeployError(f"--data {path} is text, but {bundle.source} is not a text model (it takes "
                                 f"{_inputs_text(bundle)}); give it images in class folders or .npz arrays")
        return _text_task(bundle, path, model, data)
    if model != "image":
        raise MlpdeployError(f"--data {path} is an image folder, but {bundle.source} is not an image model (it takes "
                             f"{_inputs_text(bundle)}); give it text or .npz arrays")
    return image_task(bundle, path, data, data_source(path, data_sha256(path)))


def attach_task(bundle: ModelBundle, data: DataOptions | None = None) -> ModelBundle:
    """`bundle` with the task `resolve_task` gives (the same bundle when there is no `--data`)."""
    if data is None or data.path is None:
        return bundle
    return dataclasses.replace(bundle, task=resolve_task(bundle, data))


def _inputs_text(bundle: ModelBundle) -> str:
    return ", ".join(f"{s.name} {s.dtype}{list(s.shape)}" for s in bundle.inputs)


def seq_len_for(bundle: ModelBundle, model: str, requested: int | None) -> int:
    """--seq-len, or the default for the model kind, within the model's positions."""
    high = bundle.dim_range("seq")[1]
    if requested is not None:
        if requested < 2 or requested > high:
            raise MlpdeployError(f"--seq-len {requested} is outside what {bundle.source} takes (2..{high} tokens)")
        return requested
    return min(DEFAULT_SEQ_LEN[model], high)


def _text_task(bundle: ModelBundle, path: Path, model: str, data: DataOptions) -> Task:
    from mlpdeploy.model.documents import read_text_data
    from mlpdeploy.model.text_tasks import encoder_task, text_lm_task
    from mlpdeploy.model.tokenize import load_tokenizer
    from mlpdeploy.model.torch_run import first_output_fn

    text = read_text_data(path)
    tokenizer = load_tokenizer(bundle)
    seq_len = seq_len_for(bundle, model, data.seq_len)
    source = data_source(path, text.sha256)
    if model == "causal-lm":
        return text_lm_task(text, tokenizer, seq_len, source)
    reference = first_output_fn(bundle.module, [s.name for s in bundle.inputs])
    return encoder_task(text, tokenizer, seq_len, source, reference, calibration_samples=data.samples, eval_samples=MAX_REFERENCE_EVAL)


def _array_task(bundle: ModelBundle, path: Path) -> Task:
    from mlpdeploy.model.array_task import array_task
    from mlpdeploy.model.calibration import FileData
    from mlpdeploy.model.torch_run import first_output_fn

    loaded = FileData.load(path, bundle.inputs, bundle.dim_bounds())
    reference = first_output_fn(bundle.module, [s.name for s in bundle.inputs])
    return array_task(loaded, reference, data_source(path, data_sha256(path)))
