"""Backend `tensorrt`: datacenter TensorRT (>= 10.9) with the mlpdeploy plugins, built on the GPU it targets.

Install: `pip install 'mlpdeploy[tensorrt]'` (TensorRT from NVIDIA's package index) on a machine
with an NVIDIA GPU. Without TensorRT every entry point raises one line naming the extra.

Options read (BuildOptions):
  target     None: the GPU here; `smXY`: must be the GPU here (datacenter TensorRT tunes for the
             GPU it runs on); `ampere+`: a hardware-compatible engine (AMPERE_PLUS) for any
             Ampere or newer GPU
  precision  fp32 | fp16 | bf16, applied to the graph by `mlpdeploy.precision` (strongly typed);
             plugin nodes are fed the low type (the GatedMLP plugin takes fp32, fp16 and bf16)
  shapes     optimization-profile overrides (`mlpdeploy.backends.trt_shapes`)
  extra      cache_dir, cache (False: off): the builder timing cache is kept in
             `<cache_dir>/tensorrt/timing-trt<version>-<sm>.cache` and grows with every build;
             plugin_libraries: paths of other plugin libraries, for nodes of other namespaces
  device, opt_level: do not apply; listed under `ignored_options` in info when set.

Plugin nodes stay in plugin form (`plugin_namespace="mlpdeploy"`, `plugin_version="1"`), so the
parser picks the registered plugin over the node's function body (TensorRT >= 10.7); every
mlpdeploy plugin is registered through `plugins.trt_register.register_plugins` first.

Validation: with a GPU visible, `compile` (through `engine_runner`) and `validate_engine` run the
engine itself through Polygraphy's TrtRunner (`trt_runner`); without one, `compile` runs the
parsed ONNX in ONNX Runtime (plugin nodes through their function bodies) and says so.

What has run where: datacenter TensorRT cannot be installed on the machines this was written
on, so nothing that needs `import tensorrt` has run. Everything else has: version, target and
plugin-node rules, precision and profiles, and this module's build path end to end against
TensorRT-RTX's bindings, which share the builder, parser, timing-cache and plugin-registry API
(tests/backends/test_tensorrt.py).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import onnx_ir as ir

from ..bundle import ModelBundle
from ..errors import MlpdeployError, require
from ..manifest import find_manifest
from ..onnx_io import check_onnx_path, load_ir
from ..precision import check_precision, convert_precision
from . import trt_common as common
from . import trt_log
from .base import Backend, BuildOptions, BuildResult
from .trt_shapes import derive_profile, profile_to_json

PRODUCT = "TensorRT"
MIN_VERSION = (10, 9)
HARDWARE_COMPATIBLE = "ampere+"
NO_GPU_HINT = "; datacenter TensorRT builds on the GPU it targets: run on a machine with an NVIDIA GPU, or use --backend tensorrt-rtx to build without one"


def check_version(version: str) -> None:
    """A one-line error for TensorRT older than MIN_VERSION."""
    numbers = [int(n) for n in re.findall(r"\d+", version)[:2]]
    if tuple(numbers) < MIN_VERSION:
        want = ".".join(map(str, MIN_VERSION))
        raise MlpdeployError(
            f"TensorRT {version} is too old for the tensorrt backend, which needs >= {want} (IPluginV3 Python "
            f"plugins picked by plugin_namespace); pip install -U 'mlpdeploy[tensorrt]'"
        )


def load_trt():
    """The datacenter TensorRT module (>= 10.9), or a one-line error naming the extra."""
    trt = require("tensorrt", "tensorrt", "the tensorrt backend (datacenter TensorRT >= 10.9, on a machine with an NVIDIA GPU)")
    check_version(trt.__version__)
    return trt


def resolve_target(target: str | None, gpus: list[dict[str, str]]) -> tuple[str, bool]:
    """(the target's label, whether to build hardware-compatible) for `target` on this machine's GPUs."""
    if not gpus:
        raise MlpdeployError("the tensorrt backend found no GPU" + NO_GPU_HINT)
    here = gpus[0]["sm"]
    if target is None:
        return here, False
    wanted = target.strip().lower().replace("_", "").replace(".", "")
    if wanted in (HARDWARE_COMPATIBLE, "ampereplus"):
        return HARDWARE_COMPATIBLE, True
    wanted = wanted if wanted.startswith("sm") else "sm" + wanted
    if wanted != here:
        raise MlpdeployError(
            f"target {target} requested, but the GPU here is {gpus[0]['name']} ({here}); datacenter TensorRT builds for "
            f"the GPU it runs on: omit --target, use --target {HARDWARE_COMPATIBLE}, or use --backend tensorrt-rtx for {wanted}"
        )
    return here, False


def plugin_nodes(model: ir.Model, libraries: list[str]) -> Counter:
    """Plugin node count per `namespace::op`, with one-line errors for plugins nothing will register."""
    from ..plugins.registry import OPS, PLUGIN_NAMESPACE

    counts: Counter = Counter()
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if "plugin_namespace" not in node.attributes:
            continue
        namespace = node.attributes["plugin_namespace"].as_string()
        counts[f"{namespace}::{node.op_type}"] += 1
        if namespace == PLUGIN_NAMESPACE and node.op_type not in OPS:
            raise MlpdeployError(
                f"node {node.name!r} asks for plugin {namespace}::{node.op_type}, but mlpdeploy has no such plugin; "
                f"its plugins are {', '.join(sorted(OPS)) or 'none'}"
            )
        if namespace != PLUGIN_NAMESPACE and not libraries:
            raise MlpdeployError(
                f"node {node.name!r} asks for plugin {namespace}::{node.op_type}, which mlpdeploy does not provide; "
                "pass its library in BuildOptions.extra['plugin_libraries']"
            )
    return counts


def prepare_graph(model_path: Path, precision: str, libraries: list[str]) -> tuple[ir.Model, dict, dict]:
    """The graph TensorRT will parse: plugin form kept and checked, in `precision`."""
    model = load_ir(model_path)
    counts = plugin_nodes(model, libraries)
    report = convert_precision(model, precision)
    return model, report.to_json(), dict(counts)


def register_plugins(trt, libraries: list[str]) -> list[str]:
    """TensorRT's own plugins, every mlpdeploy plugin, and any extra libraries; returns what mlpdeploy registered."""
    from ..plugins.trt_register import register_plugins as register_mlpdeploy

    trt.init_libnvinfer_plugins(trt_log.logger_for(trt), "")
    registry = trt.get_plugin_registry()
    for library in libraries:
        if registry.load_library(str(library)) is None:
            raise MlpdeployError(f"TensorRT could not load plugin library {library}; check the path and its TensorRT version")
    return register_mlpdeploy(trt)


class TensorRTBackend(Backend):
    name = "tensorrt"
    description = "Datacenter TensorRT (>= 10.9) with the mlpdeploy plugins; builds on the GPU it targets"
    extra = "tensorrt"
    suffix = ".engine"

    def build(self, model_path: Path, output: Path, options: BuildOptions) -> BuildResult:
        model_path = check_onnx_path(model_path)
        check_precision(options.precision)
        trt = load_trt()
        return self.build_with(trt, model_path, Path(output), options, common.visible_gpus())

    def build_with(self, trt, model_path: Path, output: Path, options: BuildOptions, gpus: list[dict[str, str]]) -> BuildResult:
        """The build, on a given TensorRT module and GPU list (`build` passes `tensorrt` and this machine's)."""
        target, hardware_compatible = resolve_target(options.target, gpus)
        libraries = [str(p) for p in options.extra.get("plugin_libraries", [])]
        start = time.perf_counter()
        model, precision_report, plugins = prepare_graph(model_path, options.precision, libraries)
        manifest = find_manifest(model_path)
        profile = derive_profile(model, manifest, options.shapes)
        registered = register_plugins(trt, libraries)
        timing = common.TimingCache(common.cache_dir(options.extra), "tensorrt", f"trt{trt.__version__}-{gpus[0]['sm']}")

        def configure(config, builder) -> None:
            if hardware_compatible:
                config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
            timing.attach(config)

        def make_engine(onnx_path: Path) -> tuple[bytes, dict[str, Any]]:
            result = common.build_engine(
                trt, PRODUCT, onnx_path, profile, configure=configure,
                explain_failure=lambda log: f"{PRODUCT} build failed for {target}: {trt_log.first_error(log) or 'the builder logged no error'}",
                builder_hint=NO_GPU_HINT,
            )
            return result.engine, {
                "build_seconds": round(result.seconds, 3),
                "log": trt_log.log_lines(result.log),
                "layers": engine_layers(trt, result.engine, result.log),
                "io": trt_log.engine_io_from_log(result.log),
                "network_layers": len(result.network_layers),
            }

        history = {
            "backend": self.name, "target": target, "precision": options.precision,
            "profile": profile_to_json(profile), "tensorrt": trt.__version__,
        }
        artifacts, validation_model, engine, built = common.write_artifacts(
            output, model, options.precision, manifest, history, make_engine
        )
        info = {
            "target": target,
            "gpu": gpus[0]["name"],
            "precision": options.precision,
            "precision_report": precision_report,
            "profile": profile_to_json(profile),
            "plugin_nodes": plugins,
            "plugins_registered": registered,
            "seconds": round(time.perf_counter() - start, 3),
            **built,
            "timing_cache": {"path": str(timing.path) if timing.path else None, "loaded_bytes": timing.loaded_bytes, "saved_bytes": timing.save()},
            "bytes": len(engine),
            "tensorrt": trt.__version__,
        }
        if common.ignored_options(options):
            info["ignored_options"] = common.ignored_options(options)
        note = (
            "no GPU is visible, so the ONNX graph the engine was parsed from was validated in ONNX Runtime (plugin nodes "
            "through their function bodies), not the engine; on a GPU, compile (and mlpdeploy.backends.tensorrt.validate_engine) "
            "runs the engine itself through Polygraphy's TrtRunner"
        )
        return BuildResult(self.name, artifacts, info, validation_model=validation_model, validation_note=note)

    def engine_runner(self, result: BuildResult):
        """Polygraphy's TrtRunner on the engine when a GPU is visible (TensorRT builds need one anyway)."""
        return trt_runner(result.artifacts["engine"]) if common.visible_gpus() else None


def engine_layers(trt, engine: bytes, log: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The engine's layers through the engine inspector; from the build log when it cannot be loaded here."""
    try:
        runtime = trt.Runtime(trt_log.logger_for(trt))
        loaded = runtime.deserialize_cuda_engine(engine)
        if loaded is not None:
            return trt_log.engine_layers_from_inspector(trt, loaded)
    except Exception:  # no CUDA context here: the log has the same listing
        pass
    return trt_log.engine_layers_from_log(log)


def trt_runner(engine_path: Path | str, name: str | None = None, libraries: list[str] | None = None):
    """A Polygraphy TrtRunner for a built engine, with the mlpdeploy plugins registered first."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    trt = load_trt()
    register_plugins(trt, libraries or [])
    path = Path(engine_path)
    if not path.is_file():
        raise MlpdeployError(f"engine {path} does not exist; build it with `mlpdeploy build MODEL.onnx --backend tensorrt`")
    return TrtRunner(EngineFromBytes(path.read_bytes()), name=name or f"candidate:{PRODUCT.lower()}")


def validate_engine(
    reference: ModelBundle | Path | str,
    engine_path: Path | str,
    *,
    precision: str = "fp32",
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    dims: dict[str, int] | None = None,
    runner=None,
):
    """Compare a built engine (through `trt_runner`, or `runner`) with `reference` on inputs made from its manifest."""
    from ..validate import validate

    engine_path = Path(engine_path)
    if find_manifest(engine_path) is None:
        raise MlpdeployError(f"no manifest beside {engine_path}; build the engine with mlpdeploy from a model that has one")
    candidate = runner if runner is not None else trt_runner(engine_path)
    return validate(
        reference, engine_path, candidate_runner=candidate, precision=precision, atol=atol, rtol=rtol, seed=seed, dims=dims,
        note=f"ran through {type(candidate).__name__}",
    )
