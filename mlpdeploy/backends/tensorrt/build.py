"""The TensorRT parse + build driver and the artifacts every engine build writes, shared by the
`tensorrt-rtx` and `tensorrt` backends. (What TensorRT logs is read in `log`; optimization
profiles come from `profile`; caches live in `cache`; plugin-node checks in `plugin_nodes`.)

Both TensorRT Python modules (`tensorrt_rtx_bindings`, `tensorrt`) have the same builder API;
every function here takes the module as its first argument instead of importing one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx_ir as ir

from mlpdeploy.atomic import staged_files
from mlpdeploy.backends.tensorrt.fp4_weights import decode_fp4_weights, has_fp4_weights
from mlpdeploy.backends.tensorrt.log import captured_log, first_error, format_parser_errors, network_layers
from mlpdeploy.backends.tensorrt.profile import Triple
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.manifest import Manifest, manifest_path
from mlpdeploy.onnx_io import load_ir, write_onnx
from mlpdeploy.passes.precision import emulate_in_fp32


@dataclass
class EngineBuild:
    """A serialized engine and what the builder said while making it."""

    engine: bytes
    seconds: float
    log: list[tuple[str, str]]
    network_layers: list[dict[str, str]] = field(default_factory=list)


def build_engine(
    trt,
    product: str,
    onnx_path: Path,
    profile: dict[str, Triple],
    configure: Callable[[Any, Any], None],
    explain_failure: Callable[[list[tuple[str, str]]], str],
    setup_parser: Callable[[Any], None] | None = None,
    builder_hint: str = "",
) -> EngineBuild:
    """Parse `onnx_path` into a strongly typed network and build it with one optimization profile.

    `configure(config, builder)` sets the backend's own options (targets, timing cache);
    `explain_failure(log)` turns a failed build's log into a one-line message.
    """
    with captured_log(trt) as (logger, records):
        start = time.perf_counter()
        try:
            builder = trt.Builder(logger)
        except Exception as exc:  # pybind raises when the C++ factory returns null (e.g. no usable GPU)
            detail = first_error(records) or " ".join(str(exc).split())
            raise MlpdeployError(f"{product} cannot create a builder: {detail}{builder_hint}") from None
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if setup_parser is not None:
            setup_parser(parser)
        if not parser.parse_from_file(str(onnx_path)):
            raise MlpdeployError(format_parser_errors(parser, onnx_path, product))
        config = builder.create_builder_config()
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        opt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.items():
            opt_profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(opt_profile)
        configure(config, builder)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise MlpdeployError(explain_failure(records))
        return EngineBuild(bytes(serialized), time.perf_counter() - start, records, network_layers(network))


def write_artifacts(
    output: Path,
    model: ir.Model,
    precision: str,
    manifest: Manifest | None,
    history: dict[str, Any],
    make_engine: Callable[[Path], tuple[bytes, dict[str, Any]]],
) -> tuple[dict[str, Path], Path, bytes, dict[str, Any]]:
    """Write an engine build's files atomically (all or none), beside `output`:

    `<output>` the engine, `<output>.onnx` the exact graph parsed, `<output>.log` the build log,
    `<output>.manifest.json` the derived manifest (when the model has one), and for bf16 or FP4
    weights `<output>.validate.onnx` (+ manifest), the graph with bf16 rounding emulated in fp32
    and FP4 weights decoded to float32 (ONNX Runtime's CPU provider runs neither).
    `make_engine(parsed_onnx_path)` returns the engine bytes and the build's info (with `log`).
    Returns (artifacts, validation model, engine bytes, build info).
    """
    onnx_out, log_out = output.parent / f"{output.name}.onnx", output.parent / f"{output.name}.log"
    fp4 = has_fp4_weights(model)
    validation_out = output.parent / f"{output.name}.validate.onnx" if precision == "bf16" or fp4 else onnx_out
    with staged_files(output) as tmp:
        stage = tmp.parent
        write_onnx(model, stage / onnx_out.name)
        engine, built = make_engine(stage / onnx_out.name)
        tmp.write_bytes(engine)
        (stage / log_out.name).write_text("\n".join(built["log"]) + "\n")
        if validation_out != onnx_out:
            emulated = load_ir(stage / onnx_out.name)
            if precision == "bf16":
                emulate_in_fp32(emulated)
            decode_fp4_weights(emulated)
            write_onnx(emulated, stage / validation_out.name)
        if manifest is not None:
            text = json.dumps(manifest.derived("build", **history).to_json(), indent=2) + "\n"
            for path in {onnx_out, validation_out}:
                manifest_path(stage / path.name).write_text(text)
    artifacts = {"engine": output, "onnx": onnx_out, "log": log_out}
    if validation_out != onnx_out:
        artifacts["validation_onnx"] = validation_out
    if manifest is not None:
        artifacts["manifest"] = manifest_path(onnx_out)
    return artifacts, validation_out, engine, built
