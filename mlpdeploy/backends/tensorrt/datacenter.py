"""Backend `tensorrt`: datacenter TensorRT (>= 10.9) with the mlpdeploy plugins, built on the GPU it targets.

Install: `pip install 'mlpdeploy[tensorrt]'` (TensorRT from NVIDIA's package index) on a machine
with an NVIDIA GPU. Without TensorRT every entry point raises one line naming the extra.

Options (`TensorRTOptions`):
  target     None: the GPU here; `smXY`: must be the GPU here (datacenter TensorRT tunes for the
             GPU it runs on); `ampere+`: a hardware-compatible engine (AMPERE_PLUS) for any
             Ampere or newer GPU
  precision  fp32 | fp16 | bf16, applied to the graph by `mlpdeploy.passes.precision` (strongly typed);
             plugin nodes are fed the low type (the GatedMLP plugin takes fp32, fp16 and bf16)
  shapes     optimization-profile overrides (`mlpdeploy.backends.tensorrt.profile`)
  cache_dir, cache (False: off): the builder timing cache is kept in
             `<cache_dir>/tensorrt/timing-trt<version>-<sm>.cache` and grows with every build
  plugin_libraries: paths of other plugin libraries, for nodes of other namespaces
Fields of another backend's options (device, opt_level, ...) do not apply; listed under
`ignored_options` in info when set.

Plugin nodes stay in plugin form (`plugin_namespace="mlpdeploy"`, `plugin_version="1"`), so the
parser picks the registered plugin over the node's function body (TensorRT >= 10.7); every
mlpdeploy plugin is registered first (`plugins.py`).

Running: `runner` gives the backend's one runner (`runner.TensorRTRunner`, needs a GPU), which
`runtime.Engine` uses; validation (the build's candidate, and `load_candidate` for an engine on
disk) uses it too when a GPU is visible; without one, the parsed ONNX in ONNX Runtime (plugin nodes
through their function bodies), and says so.

What has run where: datacenter TensorRT cannot be installed on the machines this was written
on, so nothing that needs `import tensorrt` has run. Everything else has: version, target and
plugin-node rules, precision and profiles, and this module's build path end to end against
TensorRT-RTX's bindings, which share the builder, parser, timing-cache and plugin-registry API
(tests/backends/test_tensorrt.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import onnx_ir as ir

from mlpdeploy.backends.base import Backend, BuildResult
from mlpdeploy.backends.candidate import Candidate
from mlpdeploy.backends.options import BuildOptions
from mlpdeploy.backends.tensorrt import build as common
from mlpdeploy.backends.tensorrt import cache as caches
from mlpdeploy.backends.tensorrt import log as trt_log
from mlpdeploy.backends.tensorrt.candidate import check_engine_path, parsed_graph_candidate, parsed_graph_path
from mlpdeploy.backends.tensorrt.gpus import visible_gpus
from mlpdeploy.backends.tensorrt.options import TensorRTOptions
from mlpdeploy.backends.tensorrt.plugin_nodes import count_plugin_nodes
from mlpdeploy.backends.tensorrt.plugins import register_plugins
from mlpdeploy.backends.tensorrt.profile import derive_profile, profile_to_json
from mlpdeploy.backends.tensorrt.runner import TensorRTRunner, trt_runner
from mlpdeploy.dtypes import check_precision
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.manifest import find_manifest
from mlpdeploy.onnx_io import check_onnx_path, load_ir
from mlpdeploy.passes.precision import convert_precision
from mlpdeploy.plugins.trt_plugin_base import import_tensorrt

PRODUCT = "TensorRT"
HARDWARE_COMPATIBLE = "ampere+"
NO_GPU_NOTE = (
    "no GPU is visible, so the ONNX graph the engine was parsed from ran in ONNX Runtime (plugin nodes through "
    "their function bodies), not the engine; on a GPU, the engine itself runs through the backend's runner"
)
NO_GPU_HINT = "; datacenter TensorRT builds on the GPU it targets: run on a machine with an NVIDIA GPU, or use --backend tensorrt-rtx to build without one"


def load_trt():
    """The datacenter TensorRT module (>= 10.9), or a one-line error naming the extra."""
    return import_tensorrt("the tensorrt backend (datacenter TensorRT >= 10.9, on a machine with an NVIDIA GPU)")


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


def prepare_graph(model_path: Path, precision: str, libraries: list[str]) -> tuple[ir.Model, dict, dict]:
    """The graph TensorRT will parse: plugin form kept and checked, in `precision`."""
    model = load_ir(model_path)
    counts = count_plugin_nodes(model, libraries)
    report = convert_precision(model, precision)
    return model, report.to_json(), dict(counts)


class TensorRTBackend(Backend):
    name = "tensorrt"
    description = "Datacenter TensorRT (>= 10.9) with the mlpdeploy plugins; builds on the GPU it targets"
    extra = "tensorrt"
    suffix = ".engine"
    pass_target = "trt"
    refused_weight_formats = ("int4asym",)  # DequantizeLinear(INT4) without zero points only
    Options = TensorRTOptions

    def build(self, model_path: Path, output: Path, options: BuildOptions | None = None) -> BuildResult:
        model_path = check_onnx_path(model_path)
        check_precision(options.precision)
        trt = load_trt()
        return self.build_with(trt, model_path, Path(output), options, visible_gpus())

    def build_with(self, trt, model_path: Path, output: Path, options: BuildOptions | None, gpus: list[dict[str, str]]) -> BuildResult:
        """The build, on a given TensorRT module and GPU list (`build` passes `tensorrt` and this machine's)."""
        options, ignored = self.options(options)
        target, hardware_compatible = resolve_target(options.target, gpus)
        libraries = [str(p) for p in options.plugin_libraries]
        start = time.perf_counter()
        model, precision_report, plugins = prepare_graph(model_path, options.precision, libraries)
        manifest = find_manifest(model_path)
        profile = derive_profile(model, manifest, options.shapes)
        registered = register_plugins(trt, libraries)
        timing = caches.TimingCache(options.cache_root(), "tensorrt", f"trt{trt.__version__}-{gpus[0]['sm']}")

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
        if ignored:
            info["ignored_options"] = ignored
        return BuildResult(self.name, artifacts, info, candidate=self.engine_candidate(output, validation_model, layer_model=model_path))

    def runner(self, artifact: Path, name: str | None = None, threads: int | None = None) -> TensorRTRunner:
        """The engine itself (needs TensorRT and a GPU; plugins registered when it is activated)."""
        return trt_runner(artifact, self.name, name=name)

    def load_candidate(self, artifact: Path) -> Candidate:
        engine = check_engine_path(artifact, self.name)
        return self.engine_candidate(engine, parsed_graph_path(engine))

    def engine_candidate(self, engine: Path, parsed_graph: Path, layer_model: Path | None = None) -> Candidate:
        """The engine itself through the backend's runner when a GPU is visible, else the graph it was parsed from."""
        gpus = visible_gpus()
        if not gpus:
            return parsed_graph_candidate(engine, parsed_graph, NO_GPU_NOTE, layer_model)
        return Candidate(
            artifact=engine,
            make_runner=lambda name: self.runner(engine, name=name),
            manifest=find_manifest(engine),
            executed=f"the {PRODUCT} engine {engine.name} through mlpdeploy's TensorRT runner on {gpus[0]['name']}",
            layer_model=layer_model,
        )


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
