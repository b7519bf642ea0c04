"""`mlpdeploy package`: built models → a Triton model repository (and a KServe InferenceService).

With Triton's own backends (`backend="native"`, the default):
    REPO/<name>/config.pbtxt       the ModelConfig (mlpdeploy.serving.triton_config)
    REPO/<name>/1/model.onnx       the ONNX build (+ its external data and custom-op libraries), or
    REPO/<name>/1/model.plan       a TensorRT engine
With Triton's Python backend (`backend="python"`, mlpdeploy.serving.triton_python):
    REPO/<name>/config.pbtxt       backend "python" (decoupled generate for cached decoders)
    REPO/<name>/1/model.py         runs the artifact with mlpdeploy's runtime
    REPO/<name>/1/<artifact>       the build under its own name, with its manifest, settings, tokenizer
Either way:
    REPO/inferenceservice.yaml     with `kserve`: a KServe InferenceService running Triton on REPO
                                   from `storage_uri` (where the repository is uploaded)

Written atomically: on any error nothing appears in REPO; models already in REPO under other
names stay (so a repository can be filled one call at a time).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from mlpdeploy.atomic import staged_directory
from mlpdeploy.backends import backend_of
from mlpdeploy.backends.onnxruntime.session import saved_session_config
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.manifest import find_manifest
from mlpdeploy.runtime.engine import resolve_artifact
from mlpdeploy.serving import triton_python
from mlpdeploy.serving.triton_config import TritonOptions, to_pbtxt, triton_config

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TRITON_IMAGE_TAG = "25.01-py3"  # the Triton release the InferenceService asks for; change to taste


def model_name(path: Path | str) -> str:
    """A model's name in the repository and on the server: the compile directory's name, else the
    artifact file's stem (`llama.ort.onnx` → `llama`)."""
    path = Path(path)
    name = path.name if path.is_dir() else path.name.split(".")[0]
    if not NAME.match(name):
        raise MlpdeployError(f"model name {name!r} (from {path}) must be letters, digits, '-', '_' or '.'; rename the directory or file")
    return name


def _copy_model(artifact: Path, version_dir: Path, engine: bool) -> None:
    version_dir.mkdir(parents=True)
    if engine:
        shutil.copy2(artifact, version_dir / "model.plan")
        return
    shutil.copy2(artifact, version_dir / "model.onnx")
    data = artifact.with_name(artifact.name + ".data")  # weights past protobuf's 2 GB limit
    if data.exists():
        shutil.copy2(data, version_dir / data.name)
    for library in saved_session_config(artifact).get("custom_ops_libraries", []):
        shutil.copy2(artifact.parent / library, version_dir / Path(library).name)


TRITON_BACKENDS = ("native", "python")


def package_triton(models: list[Path | str], repo: Path | str, options: TritonOptions | None = None,
                   kserve: bool = False, storage_uri: str | None = None, backend: str = "native",
                   python_env: str | None = None) -> dict[str, Path]:
    """Write one Triton model per built model into `repo`; returns name → model directory.

    `backend`: "native" (Triton's onnxruntime / tensorrt backends) or "python" (model.py running
    mlpdeploy's runtime, with `python_env` as its EXECUTION_ENV_PATH: a path, "none", or None for this
    Python's environment)."""
    options = options or TritonOptions()
    if backend not in TRITON_BACKENDS:
        raise MlpdeployError(f"unknown Triton backend {backend!r}; choose one of {', '.join(TRITON_BACKENDS)}")
    env = triton_python.python_env(python_env) if backend == "python" else None
    if not models:
        raise MlpdeployError("package needs at least one built model (a compile directory or a built .onnx / .engine)")
    repo = Path(repo)
    planned: dict[str, tuple[Path, object, str | None]] = {}
    for model in models:
        artifact = resolve_artifact(model)
        manifest = find_manifest(artifact)
        if manifest is None:
            raise MlpdeployError(f"no manifest beside {artifact}; package models built by `mlpdeploy build` or `compile`")
        name = model_name(model)
        if name in planned:
            raise MlpdeployError(f"two models are named {name!r}; Triton needs one directory per name — rename one")
        built_by = backend_of(manifest)
        engine_backend = None if built_by == "onnxruntime" else built_by  # an engine: Triton's TensorRT backend
        planned[name] = (artifact, manifest, engine_backend)
    if backend == "python":  # every error before writing
        texts = {name: to_pbtxt(*triton_python.python_config(name, a, m, options, env, engine=b is not None)) for name, (a, m, b) in planned.items()}
    else:
        texts = {name: triton_config(name, a, m, options, b) for name, (a, m, b) in planned.items()}
    with staged_directory(repo) as stage:
        for name, (artifact, manifest, engine_backend) in planned.items():
            if backend == "python":
                triton_python.copy_artifact(artifact, manifest, stage / name / "1")
            else:
                _copy_model(artifact, stage / name / "1", engine_backend is not None)
            (stage / name / "config.pbtxt").write_text(texts[name])
        if kserve:
            gpu = any("KIND_GPU" in text for text in texts.values())
            (stage / "inferenceservice.yaml").write_text(inference_service(repo.name, storage_uri, gpu, python_backend=backend == "python"))
    return {name: repo / name for name in planned}


def inference_service(repo_name: str, storage_uri: str | None, gpu: bool, python_backend: bool = False) -> str:
    """A KServe v1beta1 InferenceService serving the repository with Triton (KServe v2 protocol)."""
    service = re.sub(r"[^a-z0-9-]+", "-", repo_name.lower()).strip("-")[:63] or "mlpdeploy"
    uri = storage_uri or f"s3://CHANGE-ME/{repo_name}"
    resources = '          nvidia.com/gpu: "1"\n' if gpu else ""
    python = (
        "# Python-backend models (model.py) import mlpdeploy: Triton's stock image has no mlpdeploy. Build an image\n"
        f"# FROM nvcr.io/nvidia/tritonserver:{TRITON_IMAGE_TAG} with `pip install mlpdeploy` in its Python, package with\n"
        "# `--triton-python-env none`, and run it through a ServingRuntime of that image (see docs/serving.md).\n"
    ) if python_backend else ""
    return (
        "# KServe InferenceService for a Triton model repository written by `mlpdeploy package --kserve`.\n"
        "# Upload the repository to storageUri (the parameter below, or `--storage-uri` at packaging time),\n"
        "# then: kubectl apply -f inferenceservice.yaml. Clients speak the KServe v2 protocol (tritonclient works).\n"
        f"{python}"
        "apiVersion: serving.kserve.io/v1beta1\n"
        "kind: InferenceService\n"
        "metadata:\n"
        f"  name: {service}\n"
        "spec:\n"
        "  predictor:\n"
        "    model:\n"
        "      modelFormat:\n"
        "        name: triton\n"
        "      protocolVersion: v2\n"
        f"      runtimeVersion: {TRITON_IMAGE_TAG}\n"
        f'      storageUri: "{uri}"\n'
        "      resources:\n"
        "        limits:\n"
        '          cpu: "2"\n'
        "          memory: 4Gi\n"
        f"{resources}"
    )
