"""`package --triton-backend python`: a Triton Python-backend model that runs mlpdeploy's runtime.

    REPO/<name>/config.pbtxt     backend "python", the model's tensors, its batching, and parameters:
                                 `artifact` (the built file below), `EXECUTION_ENV_PATH` (the Python
                                 environment with mlpdeploy installed), `max_batch_size` (decoders)
    REPO/<name>/1/model.py       a `TritonPythonModel` handing each call to `mlpdeploy.serving.triton_model`
    REPO/<name>/1/<artifact>     the built model (copied) with what the runtime reads beside it: its
                                 manifest, session settings, external weights, custom-op libraries,
                                 tokenizer files

Per model kind:
  cached decoder   decoupled (`model_transaction_policy { decoupled: true }`), `max_batch_size: 0`:
                   generate requests (`triton_generate`) — input_ids or text_input, settings as
                   optional tensors or parameters; output_ids, text_output, finish_reason. The
                   in-flight batching scheduler's limits are parameters: `max_batch_size`
                   (sequences generating at once), `max_queue_delay_us`, `max_queue_size`,
                   `max_cache_tokens` (when given).
  anything else    Triton's dynamic batcher (`max_batch_size` capped at the exported batch range,
                   `max_queue_delay_microseconds`) over the manifest's tensors, as the native config.

Which Python runs model.py: Triton's Python backend starts a stub process that embeds libpython; with
`EXECUTION_ENV_PATH` set to a directory it first sources `<dir>/bin/activate`, so the stub's Python
resolves `python3` to that environment and imports its packages (mlpdeploy, onnxruntime). The
default is the environment running `package` (a venv or conda env: it needs bin/activate); `none`
leaves the parameter out (the server's own Python must have mlpdeploy). The stub must match that
Python's version (`serving.tritonserver` picks it for the bundled server).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from mlpdeploy.backends.onnxruntime.session import saved_session_config, session_options_path
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.manifest import Manifest, manifest_path
from mlpdeploy.serving.triton_config import Enum, TritonOptions, batch_limit, tensor_fields

MODEL_PY = '''"""Triton Python-backend model written by `mlpdeploy package --triton-backend python`.

Runs the built model that config.pbtxt's `artifact` parameter names, with mlpdeploy's runtime,
in the Python environment of its `EXECUTION_ENV_PATH` parameter (which must have mlpdeploy).
mlpdeploy is imported in `initialize`: the stub Triton starts to read the model's config never pays for it.
"""


class TritonPythonModel:
    def initialize(self, args):
        from mlpdeploy.serving.triton_model import MlpdeployModel

        self.model = MlpdeployModel(args)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
'''

# the optional settings of a generate request: tensor name → (Triton type, dims)
GENERATE_SETTINGS = {"max_tokens": ("TYPE_INT32", [1]), "temperature": ("TYPE_FP32", [1]), "top_k": ("TYPE_INT32", [1]),
                     "top_p": ("TYPE_FP32", [1]), "seed": ("TYPE_INT64", [1]), "stop_ids": ("TYPE_INT64", [-1]), "stream": ("TYPE_BOOL", [1])}


def python_env(choice: str | None = None) -> Path | None:
    """The EXECUTION_ENV_PATH to write: `choice` ("none": none), by default this Python's environment."""
    if choice is not None and choice.lower() == "none":
        return None
    env = Path(choice).resolve() if choice else Path(sys.prefix)
    if not (env / "bin" / "activate").is_file():
        how = "pass --triton-python-env with a virtualenv or conda environment that has mlpdeploy, or 'none' when the server's Python has it"
        raise MlpdeployError(f"{env} has no bin/activate, so Triton's Python backend cannot activate it; {how}")
    return env


def tokenizer_files_source(artifact: Path, manifest: Manifest) -> Path | None:
    """The directory whose tokenizer files the model's tokenizer is loaded from (none for the zoo's byte tokenizer)."""
    from mlpdeploy.runtime.tokenizer import has_tokenizer_files

    if manifest.kind != "hf":
        return None
    return next((d for d in (artifact.parent, Path(manifest.source)) if d.is_dir() and has_tokenizer_files(d)), None)


def has_tokenizer(artifact: Path, manifest: Manifest) -> bool:
    from mlpdeploy.runtime.tokenizer import tokenizer_for

    try:
        tokenizer_for(manifest, artifact.parent)
    except MlpdeployError:
        return False
    return True


def copy_artifact(artifact: Path, manifest: Manifest, version_dir: Path) -> None:
    """The built model and everything the runtime reads beside it, under their own names."""
    from mlpdeploy.runtime.tokenizer import copy_tokenizer_files

    version_dir.mkdir(parents=True)
    files = [artifact, manifest_path(artifact), artifact.with_name(artifact.name + ".data"), session_options_path(artifact)]
    if artifact.name.endswith(".onnx"):
        files += [artifact.parent / library for library in saved_session_config(artifact).get("custom_ops_libraries", [])]
    for path in files:
        if path.is_file():
            shutil.copy2(path, version_dir / path.name)
    source = tokenizer_files_source(artifact, manifest)
    if source is not None:
        copy_tokenizer_files(source, version_dir)
    (version_dir / "model.py").write_text(MODEL_PY)


def _parameter(key: str, value) -> dict:
    return {"key": key, "value": {"string_value": str(value)}}


def python_config(name: str, artifact: Path, manifest: Manifest, options: TritonOptions, env: Path | None,
                  engine: bool = False) -> tuple[dict, list[str]]:
    """The config.pbtxt fields of a Python-backend model for `artifact` (plain data) and comment lines."""
    comments = [f"{name}: packaged by mlpdeploy from {artifact.name} (source {manifest.source}); model.py runs it with mlpdeploy's runtime"]
    parameters = [_parameter("artifact", artifact.name)]
    gpu = engine or "CUDAExecutionProvider" in saved_session_config(artifact)["providers"]
    if manifest.cache:
        if engine:
            raise MlpdeployError(f"{artifact.name} is a TensorRT engine with a KV cache; the runtime generates through ONNX Runtime — "
                                 "package the .onnx build of the decoder with --triton-backend python")
        config = _decoder_fields(name, has_tokenizer(artifact, manifest))
        parameters += [_parameter("max_batch_size", options.max_batch_size), _parameter("max_queue_delay_us", options.max_queue_delay_us),
                       _parameter("max_queue_size", options.max_queue_size)]
        if options.max_cache_tokens is not None:
            parameters.append(_parameter("max_cache_tokens", options.max_cache_tokens))
        comments.append("decoupled generate model: send input_ids or text_input (+ max_tokens, temperature, top_k, top_p, seed, stop_ids, stream);")
        comments.append("`stream: true` answers one response per token (/generate_stream, gRPC streams), else one response (/generate)")
    else:
        max_batch = batch_limit(manifest, options)
        config = {"name": name, "backend": "python", "max_batch_size": max_batch, **tensor_fields(manifest, max_batch > 0)}
        if max_batch > 0:
            config["dynamic_batching"] = {"max_queue_delay_microseconds": options.max_queue_delay_us}
    config["instance_group"] = [{"count": options.instances, "kind": Enum("KIND_GPU" if gpu else "KIND_CPU")}]
    if env is not None:
        parameters.append(_parameter("EXECUTION_ENV_PATH", env))
        comments.append(f"EXECUTION_ENV_PATH: the Python environment with mlpdeploy (Python {sys.version_info.major}.{sys.version_info.minor}) where this was packaged")
    else:
        comments.append("no EXECUTION_ENV_PATH: the Triton server's own Python must have mlpdeploy installed")
    config["parameters"] = parameters
    return config, comments


def _decoder_fields(name: str, text: bool) -> dict:
    def tensor(tensor_name, data_type, dims, optional=False):
        return {"name": tensor_name, "data_type": Enum(data_type), "dims": dims} | ({"optional": True} if optional else {})

    inputs = [tensor("input_ids", "TYPE_INT64", [-1], optional=True)]
    if text:
        inputs.append(tensor("text_input", "TYPE_STRING", [1], optional=True))
    inputs += [tensor(n, t, d, optional=True) for n, (t, d) in GENERATE_SETTINGS.items()]
    outputs = [tensor("output_ids", "TYPE_INT64", [-1])]
    if text:
        outputs.append(tensor("text_output", "TYPE_STRING", [1]))
    outputs.append(tensor("finish_reason", "TYPE_STRING", [1]))
    return {"name": name, "backend": "python", "max_batch_size": 0, "model_transaction_policy": {"decoupled": True},
            "input": inputs, "output": outputs}
