"""Backend `tensorrt-rtx`: TensorRT for RTX engines, built ahead of time on any machine (no GPU needed).

Options (`RTXOptions`):
  target     sm75 | sm80 | sm86 | sm89 | sm120 | sm121; None builds TensorRT-RTX's default
             portable engine (runs on sm80, sm86, sm89 and sm120 GPUs). sm75 (Turing) has no
             fp32 GEMM: build it with precision fp16. FP4 weights build for sm120/sm121 only
             (a clear error otherwise; the portable engine accepts them but needs Blackwell to run)
  precision  fp32 | fp16 | bf16, applied to the graph by `mlpdeploy.passes.precision` (strongly typed)
  shapes     optimization-profile overrides (`mlpdeploy.backends.tensorrt.profile`)
  cache_dir (default $MLPDEPLOY_CACHE_DIR or ~/.cache/mlpdeploy), cache (False: off)
Fields of another backend's options (device, opt_level, ...) do not apply (the build runs on the
CPU; TensorRT-RTX compiles kernels when the engine is loaded); listed under `ignored_options` in
info when set.

Running: `runner` gives the backend's one runner (`runner.TensorRTRunner` over
`tensorrt_rtx_bindings`, needs a GPU), which `runtime.Engine` uses, and validation too when a GPU
the engine targets is visible; otherwise validation runs the parsed graph in ONNX Runtime and
says why.

Steps: the graph is put in function-body form (plugins/forms.py) and refused if any node
would still resolve to a TensorRT plugin (TensorRT-RTX has no plugin layer and aborts the
process when its parser meets one); converted to the precision; parsed (errors name node and
op) and built with one optimization profile.

Artifacts (written atomically, all or none): `<engine>`, `<engine>.onnx` (the exact graph
parsed: validation runs it in ONNX Runtime), `<engine>.log` (the build log), the derived
`<engine>.manifest.json`; for bf16 also `<engine>.validate.onnx`, the same graph with bf16
rounding emulated in fp32 (ONNX Runtime's CPU provider has no bf16 MatMul), which validation
runs instead. Info: target, precision (+ what was converted), profile, build log, engine layers
and I/O tensors (read from the builder's log: the engine inspector needs a GPU), seconds, bytes.

Cache: TensorRT-RTX's timing cache is a deprecated no-op (it does no autotuning ahead of
time) and its runtime cache needs a GPU, so the cache here is of whole engines, keyed by a
digest of the parsed ONNX, the target, the profile and the TensorRT-RTX version
(`<cache_dir>/tensorrt-rtx/<digest>.engine`); a hit skips the build.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import onnx_ir as ir

from mlpdeploy.backends.base import Backend, BuildResult
from mlpdeploy.backends.candidate import Candidate
from mlpdeploy.backends.options import BuildOptions
from mlpdeploy.backends.tensorrt import build as common
from mlpdeploy.backends.tensorrt import cache as caches
from mlpdeploy.backends.tensorrt import log as trt_log
from mlpdeploy.backends.tensorrt.candidate import check_engine_path, parsed_graph_candidate, parsed_graph_path
from mlpdeploy.backends.tensorrt.fp4_weights import has_fp4_weights
from mlpdeploy.backends.tensorrt.gpus import visible_gpus
from mlpdeploy.backends.tensorrt.options import RTX_TARGETS as TARGETS
from mlpdeploy.backends.tensorrt.options import RTXOptions
from mlpdeploy.backends.tensorrt.plugin_nodes import plugin_resolving_nodes
from mlpdeploy.backends.tensorrt.profile import derive_profile, profile_to_json
from mlpdeploy.backends.tensorrt.runner import TensorRTRunner, trt_runner
from mlpdeploy.contract import DOMAIN
from mlpdeploy.dtypes import check_precision
from mlpdeploy.errors import MlpdeployError, require
from mlpdeploy.model.manifest import find_manifest
from mlpdeploy.onnx_io import check_onnx_path, load_ir
from mlpdeploy.passes.precision import convert_precision

PRODUCT = "TensorRT-RTX"
PORTABLE_SMS = ("sm80", "sm86", "sm89", "sm120")
PORTABLE = f"portable (TensorRT-RTX default: {', '.join(PORTABLE_SMS)})"
FP4_TARGETS = ("sm120", "sm121")


def check_target(target: str | None) -> str | None:
    """The target in canonical form (`sm89`), None for the portable default, or a one-line error."""
    if target is None:
        return None
    canonical = target.strip().lower().replace(".", "").replace("_", "")
    if not canonical.startswith("sm"):
        canonical = "sm" + canonical
    if canonical not in TARGETS:
        raise MlpdeployError(f"unknown TensorRT-RTX target {target!r}; valid targets are {', '.join(TARGETS)}")
    return canonical


def load_trt():
    return require("tensorrt_rtx_bindings", "rtx", "the tensorrt-rtx backend")


def prepare_graph(model_path: Path, precision: str) -> tuple[ir.Model, dict]:
    """The graph TensorRT-RTX will parse: function-body form, checked for plugin nodes, in `precision`."""
    from mlpdeploy.plugins.forms import function_body_form

    model = load_ir(model_path)
    function_body_form(model)
    bad = plugin_resolving_nodes(model)
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise MlpdeployError(
            f"{model_path.name}: node {bad[0]}{more}, so TensorRT-RTX would resolve it to a plugin, which it cannot "
            "build (its parser aborts the process); give every custom op an ONNX function body, or use --backend tensorrt"
        )
    report = convert_precision(model, precision)
    return model, report.to_json()


def explain_failure(records: list[tuple[str, str]], target: str | None) -> str:
    """A failed build's log as one line; FP4 before Blackwell and fp32 GEMMs on Turing said plainly."""
    error = trt_log.first_error(records) or "the builder logged no error"
    hw = re.search(r"HW-specific datatypes:\s*([\w, ]+?)(?:\.|\s+In\s|$)", error)
    if hw:
        dtypes = hw.group(1).strip()
        return (
            f"{PRODUCT} cannot build for {target}: the model contains {dtypes} tensors, which only Blackwell GPUs "
            f"({', '.join(FP4_TARGETS)}) support; build with --target sm120 (or sm121), or quantize those weights to "
            "int4/fp8 for this target"
        )
    turing = re.search(r"Cannot compile operation '([^']*)' for Turing \(SM75\): (FP32 \w+) is not supported", error)
    if turing:
        return (
            f"{PRODUCT} cannot build node {turing.group(1)!r} for sm75: Turing GPUs have no {turing.group(2)} in "
            f"{PRODUCT}; build with --precision fp16 for sm75"
        )
    return f"{PRODUCT} build failed for {target or 'the portable target'}: {error}"


def validation_note(target: str | None, precision: str, fp4: bool = False) -> str:
    """Why the engine itself was not run, stated from what this machine has."""
    gpus = visible_gpus()
    graph = "the ONNX graph the engine was parsed from ran in ONNX Runtime instead"
    if precision == "bf16":
        graph += ", with bf16 rounding emulated in fp32 (ONNX Runtime's CPU provider has no bf16 kernels)"
    if fp4:
        graph += ", with its FP4 weights decoded exactly to fp32 (ONNX Runtime's CPU provider has no FLOAT4E2M1 DequantizeLinear)"
    if not gpus:
        return f"the {PRODUCT} engine itself was not run: no GPU is present; {graph}"
    here = ", ".join(f"{g['name']} ({g['sm']})" for g in gpus)
    if target is not None and all(g["sm"] != target for g in gpus):
        return f"the {PRODUCT} engine itself was not run: it targets {target} and the GPU here is {here}; {graph}"
    if target is None and all(g["sm"] not in PORTABLE_SMS for g in gpus):
        return f"the {PRODUCT} engine itself was not run: the portable engine runs on {', '.join(PORTABLE_SMS)} and the GPU here is {here}; {graph}"
    return f"the {PRODUCT} engine itself was not run: TensorRT-RTX's runtime is not installed (pip install 'mlpdeploy[rtx]'); {graph}"


def runnable_on(target: str | None) -> dict[str, str] | None:
    """The visible GPU an engine built for `target` (None: portable) runs on, if any, with the runtime installed."""
    import importlib.util

    if importlib.util.find_spec("tensorrt_rtx_bindings") is None:
        return None
    return next((g for g in visible_gpus() if g["sm"] == target or (target is None and g["sm"] in PORTABLE_SMS)), None)


def refuse_w4a16(model) -> None:
    """MXFP4 weights reach TensorRT as mlpdeploy::W4A16MatMul, which only datacenter TensorRT's plugin runs."""
    ops = [(n.domain, n.op_type) for n in model.graph] + [(domain, name) for domain, name, _ in model.functions]
    if any(domain == DOMAIN and op.startswith("W4A16MatMul") for domain, op in ops):
        raise MlpdeployError(f"{PRODUCT} cannot build MXFP4 weights (its ONNX parser reads E8M0 scales only for MXFP8, and it runs no "
                             "mlpdeploy plugins): quantize those layers as nvfp4 or int4, or build with --backend tensorrt (W4A16 plugin)")


class TensorRTRTXBackend(Backend):
    name = "tensorrt-rtx"
    description = ("TensorRT for RTX: engines for sm75-sm121 GPUs built ahead of time, no GPU needed; run on a GPU they target, "
                   "else validated through the parsed ONNX")
    extra = "rtx"
    suffix = ".engine"
    pass_target = "trt"
    refused_weight_formats = ("int4asym", "mxfp4")  # no INT4 zero points; no MXFP4 form, no mlpdeploy plugins
    Options = RTXOptions

    def build(self, model_path: Path, output: Path, options: BuildOptions | None = None) -> BuildResult:
        options, ignored = self.options(options)
        model_path, output = check_onnx_path(model_path), Path(output)
        target = check_target(options.target)
        check_precision(options.precision)
        trt = load_trt()
        start = time.perf_counter()
        model, precision_report = prepare_graph(model_path, options.precision)
        refuse_w4a16(model)
        manifest = find_manifest(model_path)
        profile = derive_profile(model, manifest, options.shapes)
        cache = caches.EngineCache(options.cache_root(), "tensorrt-rtx")
        state = {"cache": "off" if cache.dir is None else "miss"}

        def make_engine(onnx_path: Path) -> tuple[bytes, dict]:
            settings = {"product": PRODUCT, "version": trt.__version__, "target": target, "profile": profile}
            key = caches.file_digest(onnx_path, onnx_path.parent / f"{onnx_path.name}.data", settings=settings)
            cached = cache.load(key)
            if cached is not None:
                state["cache"] = "hit"
                return cached
            result = common.build_engine(
                trt, PRODUCT, onnx_path, profile,
                configure=lambda config, builder: self._configure(trt, config, target),
                explain_failure=lambda log: explain_failure(log, target),
            )
            built = {
                "build_seconds": round(result.seconds, 3),
                "log": trt_log.log_lines(result.log),
                "io": trt_log.engine_io_from_log(result.log),
                "layers": trt_log.engine_layers_from_log(result.log),
                "network_layers": len(result.network_layers),
            }
            cache.store(key, result.engine, built)
            return result.engine, built

        history = {
            "backend": self.name, "target": target or "portable", "precision": options.precision,
            "profile": profile_to_json(profile), "tensorrt_rtx": trt.__version__,
        }
        artifacts, validation_model, engine, built = common.write_artifacts(
            output, model, options.precision, manifest, history, make_engine
        )
        info = {
            "target": target or PORTABLE,
            "precision": options.precision,
            "precision_report": precision_report,
            "profile": profile_to_json(profile),
            "seconds": round(time.perf_counter() - start, 3),
            **built,
            "cache": state["cache"],
            "bytes": len(engine),
            "tensorrt_rtx": trt.__version__,
        }
        if ignored:
            info["ignored_options"] = ignored
        candidate = self.engine_candidate(output, validation_model, target, options.precision, has_fp4_weights(model), model_path)
        return BuildResult(backend=self.name, artifacts=artifacts, info=info, candidate=candidate)

    def runner(self, artifact: Path, name: str | None = None, threads: int | None = None) -> TensorRTRunner:
        """The engine itself (needs TensorRT-RTX's runtime and a GPU it was built for)."""
        return trt_runner(artifact, self.name, name=name)

    def load_candidate(self, artifact: Path) -> Candidate:
        engine = check_engine_path(artifact, self.name)
        manifest = find_manifest(engine)
        build = manifest.last("build") if manifest else {}
        target = None if build.get("target") == "portable" else build.get("target")
        fp4 = has_fp4_weights(load_ir(engine.parent / f"{engine.name}.onnx"))
        return self.engine_candidate(engine, parsed_graph_path(engine), target, build.get("precision", "fp32"), fp4)

    def engine_candidate(self, engine: Path, parsed_graph: Path, target: str | None, precision: str, fp4: bool,
                         layer_model: Path | None = None) -> Candidate:
        """The engine through the backend's runner on a GPU it targets, else the graph it was parsed from (and why)."""
        gpu = runnable_on(target)
        if gpu is None:
            return parsed_graph_candidate(engine, parsed_graph, validation_note(target, precision, fp4), layer_model)
        return Candidate(artifact=engine, make_runner=lambda name: self.runner(engine, name=name), manifest=find_manifest(engine),
                         executed=f"the {PRODUCT} engine {engine.name} through mlpdeploy's TensorRT runner on {gpu['name']}",
                         layer_model=layer_model)

    @staticmethod
    def _configure(trt, config, target: str | None) -> None:
        if target is not None:
            config.num_compute_capabilities = 1
            config.set_compute_capability(getattr(trt.ComputeCapability, target.upper()), 0)
