"""--data image folders: class folders → labels, a stratified disjoint split, and the model's own
preprocessing (a Hugging Face image processor's config, timm's pretrained_cfg, else the options)."""

from __future__ import annotations

import numpy as np
import pytest

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.tasks import DataOptions, resolve_task

Image = pytest.importorskip("PIL.Image", reason="needs the images extra (Pillow)")


def make_folder(root, classes=("cat", "dog"), per_class=6, seed=0):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            pixels[..., c % 3] = 255  # a class is a colour: learnable by eye
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def hf_vit_dir(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hf") / "vit"
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, num_labels=2, id2label={0: "dog", 1: "cat"}, label2id={"dog": 0, "cat": 1})
    transformers.ViTForImageClassification(config).save_pretrained(str(path))
    processor = transformers.ViTImageProcessorPil(size={"height": 40, "width": 40}, do_center_crop=True, crop_size={"height": 32, "width": 32},
                                                  image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.25], resample=3)
    processor.save_pretrained(str(path))
    return path


def test_hf_image_classifier_uses_its_processor_config_and_labels(hf_vit_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    from mlpdeploy.model import load_model
    from mlpdeploy.model.torch_run import first_output_fn

    bundle = load_model(str(hf_vit_dir))
    assert [s.name for s in bundle.inputs] == ["pixel_values"] and bundle.inputs[0].shape == ["batch", 3, 32, 32]
    folder = make_folder(tmp_path / "pets")
    task = resolve_task(bundle, DataOptions(path=folder))
    assert task.info["labels_from"] == "the model's label2id" and task.info["classes"] == {"cat": 1, "dog": 0}
    assert task.preprocess.source.endswith("preprocessor_config.json")

    # the preprocessing equals Hugging Face's own image processor on the same files
    processor = transformers.ViTImageProcessorPil.from_pretrained(str(hf_vit_dir))
    batch = next(task.eval_batches(8))
    files = [p for p, _ in task.evaluation]
    expected = processor([Image.open(f) for f in files], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(batch["pixel_values"], expected, atol=1e-5)
    np.testing.assert_array_equal(batch["labels"], [1 if f.parent.name == "cat" else 0 for f in files])

    # split: per class, disjoint, deterministic, a fifth held out
    assert not {p for p, _ in task.calibration} & set(files)
    assert sorted(p.parent.name for p in files) == ["cat", "dog"]
    assert resolve_task(bundle, DataOptions(path=folder)).evaluation == task.evaluation
    result = task.evaluate(first_output_fn(bundle.module, ["pixel_values"]))
    logits = bundle.module(__import__("torch").from_numpy(expected)).detach().numpy()
    assert result["metric"] == "accuracy" and result["value"] == pytest.approx(float((logits.argmax(-1) == batch["labels"]).mean()))


def test_zoo_image_model_without_config_uses_the_options(tmp_path):
    from mlpdeploy.model import load_model

    bundle = load_model("kan-tiny")  # 1×8×8 digits
    folder = make_folder(tmp_path / "digits", classes=("zero", "one", "two"), per_class=5)
    task = resolve_task(bundle, DataOptions(path=folder, mean=(0.5,), std=(0.5,)))
    batch = next(task.eval_batches(16))
    assert batch["pixel_values"].shape == (3, 1, 8, 8) and task.preprocess.source == "--image-size/--mean/--std"
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    assert task.info["classes"] == {"one": 0, "two": 1, "zero": 2}  # sorted folder names
    first = task.evaluation[0][0]
    gray = np.asarray(Image.open(first).convert("L").resize((8, 8), resample=2), np.float32) / 255
    np.testing.assert_allclose(batch["pixel_values"][0, 0], (gray - 0.5) / 0.5, atol=1e-6)
    with pytest.raises(MlpdeployError, match=r"makes 16×16 images, but kan-tiny takes 8×8"):
        resolve_task(bundle, DataOptions(path=folder, image_size=16))


def test_timm_pretrained_cfg(tmp_path):
    import torch

    from mlpdeploy.model.source import bundle_from_module

    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 24 * 24, 2))
    module.pretrained_cfg = {"input_size": (3, 24, 24), "interpolation": "bicubic", "crop_pct": 0.75,
                             "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}  # what timm sets on its models
    bundle = bundle_from_module(module, torch.zeros(2, 3, 24, 24), None, "user", "factory")
    task = resolve_task(bundle, DataOptions(path=make_folder(tmp_path / "x")))
    assert task.preprocess.source == "pretrained_cfg (timm)" and task.preprocess.resize == ("shortest", 32)
    path = task.evaluation[0][0]
    image = Image.open(path).convert("RGB")
    w, h = image.size
    size = (32, int(32 * h / w)) if w <= h else (int(32 * w / h), 32)
    image = image.resize(size, resample=3)
    left, top = (image.width - 24) // 2, (image.height - 24) // 2
    expected = (np.asarray(image.crop((left, top, left + 24, top + 24)), np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(next(task.eval_batches(1))[task.input_name][0], expected.transpose(2, 0, 1), atol=1e-5)
