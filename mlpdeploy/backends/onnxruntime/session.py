"""Run ONNX models in ONNX Runtime with the session settings mlpdeploy builds them with.

The settings are plain JSON data (`session_config`), saved beside a built model as
`<name>.session.json`, so every later run (validation, task metrics, benchmarks, serving)
uses exactly what the build used.
"""

from __future__ import annotations

import json
from pathlib import Path

from mlpdeploy.errors import MlpdeployError, first_line

OPT_LEVELS = {
    "disabled": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
# The default level: "all" measured as fast as or faster than "extended" on every suite workload
# (bench/ort_opt_level.py). Its layout transforms (NCHWc convolutions) depend on the CPU, so a build
# saves the graph optimized at PORTABLE_LEVEL and ONNX Runtime applies the rest when it loads it.
DEFAULT_OPT_LEVEL = "all"
PORTABLE_LEVEL = "ORT_ENABLE_EXTENDED"

# ORT fuses DQ(int4)->MatMul into MatMulNBits; at accuracy level 4 it quantizes activations to
# int8 (error 1.9e-5 -> 0.42 measured; docs/formats.md). mlpdeploy keeps it exact (level 0).
CONFIG_ENTRIES = {"session.qdq_matmulnbits_accuracy_level": "0"}


def session_config(opt_level: str = DEFAULT_OPT_LEVEL, device: str = "auto", threads: int = 0) -> dict:
    """The session settings mlpdeploy builds and runs a model with, as plain JSON data."""
    import onnxruntime as ort

    if opt_level not in OPT_LEVELS:
        raise MlpdeployError(f"unknown ONNX Runtime optimization level {opt_level!r}; choose one of {', '.join(OPT_LEVELS)}")
    available = ort.get_available_providers()
    if device == "cpu":
        providers = ["CPUExecutionProvider"]
    elif device in ("cuda", "auto"):
        if "CUDAExecutionProvider" in available:
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif device == "cuda":
            raise MlpdeployError(
                f"device cuda requested, but available ONNX Runtime providers are {', '.join(available)}; "
                "install onnxruntime-gpu on a machine with a GPU, or use --device cpu"
            )
        else:
            providers = ["CPUExecutionProvider"]
    else:
        raise MlpdeployError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return {
        "graph_optimization_level": OPT_LEVELS[opt_level],
        "providers": providers,
        "intra_op_num_threads": threads,
        "config_entries": dict(CONFIG_ENTRIES),
        "onnxruntime_version": ort.__version__,
    }


def make_session(model_path: Path | str, config: dict, optimized_output: Path | None = None, external_data: bool = False):
    """An InferenceSession for `model_path` with the settings of `session_config`.

    `config["custom_ops_libraries"]` (set by `build --ort-kernels`) lists mlpdeploy's compiled
    kernel libraries to register, relative to the model's directory unless absolute.
    """
    import onnxruntime as ort

    from mlpdeploy.plugins.ort.library import register

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, config["graph_optimization_level"])
    options.intra_op_num_threads = config.get("intra_op_num_threads", 0)
    options.log_severity_level = 3
    for key, value in config.get("config_entries", {}).items():
        options.add_session_config_entry(key, value)
    for library in config.get("custom_ops_libraries", []):
        register(options, Path(model_path).parent / library)  # an absolute path stays as it is
    if optimized_output is not None:
        options.optimized_model_filepath = str(optimized_output)
        if external_data:  # a model past protobuf's 2 GB limit keeps its weights beside it
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", optimized_output.name + ".data")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        return ort.InferenceSession(str(model_path), options, providers=config["providers"])
    except Exception as exc:
        raise MlpdeployError(f"ONNX Runtime cannot load {model_path}: {first_line(exc)}") from None


def session_options_path(model_path: Path | str) -> Path:
    """`x.ort.onnx` → `x.ort.session.json`, the session settings saved beside a built model."""
    path = Path(model_path)
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return path.parent / f"{stem}.session.json"


def saved_session_config(model_path: Path | str) -> dict:
    """The session settings `build` saved beside a model, else the defaults."""
    saved = session_options_path(model_path)
    return json.loads(saved.read_text()) if saved.exists() else session_config()
