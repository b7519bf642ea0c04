"""A built model's Triton `config.pbtxt` (the ModelConfig protobuf in text format).

What is carried over from the build:
  platform        `onnxruntime_onnx` for an ONNX build, `tensorrt_plan` for a TensorRT engine
  input/output    names, Triton data types, dims from the manifest (-1 for every dynamic dim)
  batching        when every input and output leads with the manifest's `batch` dim:
                  `max_batch_size` (the option, capped at the exported batch range), the batch dim
                  left out of dims as Triton wants, and `dynamic_batching`
  instance_group  KIND_GPU when the build runs on CUDA (or is an engine), else KIND_CPU
  ONNX Runtime    the build's optimization level (`optimization.graph.level`), intra-op threads
                  (`parameters`), and custom-op libraries (`model_operations`)

A decoder compiled with `--kv-cache` gets Triton's sequence batcher with *implicit state*: each
layer's `past_key_values.<i>.key|value` input is fed from its `present.<i>.key|value` output of
the previous request of the same sequence, starting from an empty cache (zero past positions).
The client sends `input_ids`, `attention_mask` (ones over past + new tokens) and `position_ids`
with `sequence_id` / `sequence_start` / `sequence_end`, and reads `logits`; Triton keeps the cache.
Sequences run one per execution (`max_batch_size: 1`), since caches of different lengths cannot
be stacked into one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlpdeploy.backends.onnxruntime.session import saved_session_config
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.kv_cache import CacheLayout
from mlpdeploy.model.manifest import Manifest
from mlpdeploy.serving.datatypes import config_datatype

# mlpdeploy's ONNX Runtime optimization level → Triton ORT backend `optimization.graph.level`
# (-1 basic, 1 extended, 2 disabled; absent = all), read from onnxruntime_backend's source.
ORT_LEVELS = {"ORT_ENABLE_BASIC": -1, "ORT_ENABLE_EXTENDED": 1, "ORT_DISABLE_ALL": 2, "ORT_ENABLE_ALL": None}


class Enum(str):
    """A protobuf enum value: written without quotes."""


@dataclass
class TritonOptions:
    max_batch_size: int = 16
    instances: int = 1
    max_queue_delay_us: int = 100
    sequence_idle_us: int = 60_000_000
    max_cache_tokens: int | None = None  # python-backend decoders: the scheduler's cache budget (None: its default)
    max_queue_size: int = 0  # python-backend decoders: requests waiting beyond the batch (0: no limit)
    mount: str = "/models"  # where the server sees the repository (for custom-op library paths)


def _dims(shape: list, skip_batch: bool) -> list[int]:
    return [-1 if isinstance(d, str) else int(d) for d in (shape[1:] if skip_batch else shape)]


def _batched(manifest: Manifest) -> bool:
    shapes = [s.shape for s in manifest.inputs] + [o["shape"] for o in manifest.outputs]
    return all(shape and shape[0] == "batch" for shape in shapes)


def batch_limit(manifest: Manifest, options: TritonOptions) -> int:
    """Triton's max_batch_size for a model without a cache: the option capped at the exported batch
    range when every tensor leads with the `batch` dim, else 0 (Triton does not batch it)."""
    if not _batched(manifest):
        return 0
    return max(1, min(options.max_batch_size, manifest.dims.get("batch", [1, options.max_batch_size])[1]))


def tensor_fields(manifest: Manifest, skip_batch: bool, exclude: set[str] = frozenset()) -> dict:
    """The `input` and `output` fields of the manifest's tensors (the batch dim left out when Triton batches)."""
    return {
        "input": [{"name": s.name, "data_type": Enum(config_datatype(s.dtype)), "dims": _dims(s.shape, skip_batch)}
                  for s in manifest.inputs if s.name not in exclude],
        "output": [{"name": o["name"], "data_type": Enum(config_datatype(o["dtype"])), "dims": _dims(o["shape"], skip_batch)}
                   for o in manifest.outputs if o["name"] not in exclude],
    }


def model_config(name: str, artifact: Path, manifest: Manifest, options: TritonOptions, engine_backend: str | None = None) -> tuple[dict, list[str]]:
    """The ModelConfig fields for `artifact` (plain data; `Enum` marks enum values) and comment lines."""
    comments = [f"{name}: packaged by mlpdeploy from {artifact.name} (source {manifest.source})"]
    layout = CacheLayout.from_json(manifest.cache) if manifest.cache else None
    state_names = {n for layer in layout.layers for n in (*layout.input_names(layer), *layout.output_names(layer))} if layout else set()
    max_batch = 1 if layout is not None else batch_limit(manifest, options)
    config: dict = {
        "name": name,
        "platform": "tensorrt_plan" if engine_backend else "onnxruntime_onnx",
        "max_batch_size": max_batch,
        **tensor_fields(manifest, max_batch > 0, exclude=state_names),
    }
    if layout is not None:
        config["sequence_batching"] = _sequence_batching(layout, manifest, options)
        comments.append("KV cache: Triton's sequence batcher keeps each layer's cache as implicit state (past_key_values.* <- present.*);")
        comments.append("send input_ids, attention_mask (ones over past + new tokens) and position_ids with sequence_id/start/end")
    elif max_batch > 0:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": options.max_queue_delay_us}
    gpu = engine_backend is not None
    if engine_backend is None:
        session = saved_session_config(artifact)
        gpu = "CUDAExecutionProvider" in session["providers"]
        level = ORT_LEVELS.get(session["graph_optimization_level"])
        if level is not None:
            config["optimization"] = {"graph": {"level": level}}
        config["parameters"] = [{"key": "intra_op_thread_count", "value": {"string_value": str(session.get("intra_op_num_threads", 0))}}]
        libraries = session.get("custom_ops_libraries", [])
        if libraries:
            config["model_operations"] = {"op_library_filename": [f"{options.mount}/{name}/1/{Path(lib).name}" for lib in libraries]}
        entries = session.get("config_entries", {})
        if entries:
            comments.append(f"session config entries of the build that Triton's ORT backend does not set: {entries}")
    else:
        comments.append("TensorRT plan: Triton's TensorRT backend loads plugin layers from shared libraries "
                        "(--backend-config=tensorrt,plugins=...); mlpdeploy's plugins are Python (IPluginV3), so an engine")
        comments.append("with mlpdeploy plugin layers does not load in Triton: build it from the function-body form (no plugin nodes)")
    config["instance_group"] = [{"count": options.instances, "kind": Enum("KIND_GPU" if gpu else "KIND_CPU")}]
    return config, comments


def _sequence_batching(layout: CacheLayout, manifest: Manifest, options: TritonOptions) -> dict:
    dtype = Enum(config_datatype(layout.dtype))
    states = []
    for layer in layout.layers:
        for past, present in zip(layout.input_names(layer), layout.output_names(layer)):
            dims = _dims(manifest.input(past).shape, skip_batch=True)
            empty = [0 if d == -1 else d for d in dims]
            states.append({
                "input_name": past, "output_name": present, "data_type": dtype, "dims": dims,
                "initial_state": [{"name": "empty cache", "data_type": dtype, "dims": empty, "zero_data": True}],
            })
    return {"max_sequence_idle_microseconds": options.sequence_idle_us, "oldest": {"max_candidate_sequences": 16}, "state": states}


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, int):
        return str(value)
    raise MlpdeployError(f"cannot write {value!r} into config.pbtxt")


def _lines(fields: dict, indent: str) -> list[str]:
    out = []
    for key, value in fields.items():
        if isinstance(value, dict):
            out += [f"{indent}{key} {{", *_lines(value, indent + "  "), f"{indent}}}"]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:  # a repeated message: one block per element
                out += [f"{indent}{key} {{", *_lines(item, indent + "  "), f"{indent}}}"]
        elif isinstance(value, list):
            out.append(f"{indent}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            out.append(f"{indent}{key}: {_scalar(value)}")
    return out


def to_pbtxt(fields: dict, comments: list[str] = ()) -> str:
    """ModelConfig fields as protobuf text format (comments first, as `#` lines)."""
    return "".join(f"# {c}\n" for c in comments) + "\n".join(_lines(fields, "")) + "\n"


def triton_config(name: str, artifact: Path, manifest: Manifest, options: TritonOptions | None = None, engine_backend: str | None = None) -> str:
    """The config.pbtxt text for one built model."""
    if engine_backend == "tensorrt-rtx":
        raise MlpdeployError(
            f"{artifact.name} is a TensorRT-RTX engine; Triton's tensorrt_plan platform runs datacenter TensorRT engines only — "
            "package the ONNX build (onnxruntime_onnx) or an engine built with --backend tensorrt"
        )
    return to_pbtxt(*model_config(name, artifact, manifest, options or TritonOptions(), engine_backend))
