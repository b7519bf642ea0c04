"""Code shared by the `tensorrt-rtx` and `tensorrt` backends: the parse + build driver, the
artifacts every engine build writes, plugin-node checks, caches on disk, the GPU check.
(What TensorRT logs is read in `trt_log`; optimization profiles come from `trt_shapes`.)

Both TensorRT Python modules (`tensorrt_rtx_bindings`, `tensorrt`) have the same builder API;
every function here takes the module as its first argument instead of importing one.

Caches live under `BuildOptions.extra["cache_dir"]`, else `$MLPDEPLOY_CACHE_DIR`, else
`~/.cache/mlpdeploy`; `extra["cache"] = False` turns them off.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx_ir as ir

from ..atomic import staged_files
from ..errors import MlpdeployError
from ..manifest import Manifest, manifest_path
from ..onnx_io import load_ir, write_onnx
from ..precision import emulate_in_fp32
from .base import BuildOptions
from .trt_log import captured_log, first_error, format_parser_errors, network_layers
from .trt_shapes import Triple

# Domains whose ops the TensorRT ONNX parser imports itself; a node in any other domain with no
# model-local function is looked up in the plugin registry by its op_type.
STANDARD_DOMAINS = ("", "ai.onnx")
PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version")


# --- plugin nodes -----------------------------------------------------------------------------

def plugin_resolving_nodes(model: ir.Model) -> list[str]:
    """Nodes the TensorRT parser would resolve to a plugin, as `'name' (domain::Op): why`.

    A node resolves to a plugin when it carries `plugin_namespace`/`plugin_version`, or when it
    is outside the standard domains and no model-local function defines it.
    """
    found = []
    for owner, node in _all_nodes(model):
        label = f"{node.name or '<unnamed>'!r} ({node.domain + '::' if node.domain else ''}{node.op_type}){owner}"
        attrs = [a for a in PLUGIN_ATTRIBUTES if a in node.attributes]
        if attrs:
            found.append(f"{label} carries {', '.join(attrs)}")
        elif node.domain not in STANDARD_DOMAINS and (node.domain, node.op_type, node.overload) not in model.functions:
            found.append(f"{label} is in domain {node.domain!r} and has no ONNX function body")
    return found


def _all_nodes(model: ir.Model):
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        yield "", node
    for function in model.functions.values():
        for node in ir.traversal.RecursiveGraphIterator(function):
            yield f" in function {function.name}", node


# --- the build driver ------------------------------------------------------------------------

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


# --- artifacts -------------------------------------------------------------------------------

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
    `<output>.manifest.json` the derived manifest (when the model has one), and for bf16
    `<output>.validate.onnx` (+ manifest), the graph with bf16 rounding emulated in fp32.
    `make_engine(parsed_onnx_path)` returns the engine bytes and the build's info (with `log`).
    Returns (artifacts, validation model, engine bytes, build info).
    """
    onnx_out, log_out = output.parent / f"{output.name}.onnx", output.parent / f"{output.name}.log"
    validation_out = output.parent / f"{output.name}.validate.onnx" if precision == "bf16" else onnx_out
    with staged_files(output) as tmp:
        stage = tmp.parent
        write_onnx(model, stage / onnx_out.name)
        engine, built = make_engine(stage / onnx_out.name)
        tmp.write_bytes(engine)
        (stage / log_out.name).write_text("\n".join(built["log"]) + "\n")
        if validation_out != onnx_out:
            emulated = load_ir(stage / onnx_out.name)
            emulate_in_fp32(emulated)
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


def ignored_options(options: BuildOptions) -> list[str]:
    """The shared options a TensorRT backend does not use, when set away from their defaults."""
    return [k for k, default in (("device", "auto"), ("opt_level", "extended")) if getattr(options, k) != default]


# --- caches ----------------------------------------------------------------------------------

def cache_dir(extra: dict[str, Any]) -> Path | None:
    """Where caches live (module docstring), or None when `extra["cache"]` is False."""
    if extra.get("cache", True) is False:
        return None
    root = extra.get("cache_dir") or os.environ.get("MLPDEPLOY_CACHE_DIR") or Path.home() / ".cache" / "mlpdeploy"
    return Path(root).expanduser()


def file_digest(*paths: Path, settings: dict[str, Any]) -> str:
    """sha256 over the files' bytes (those that exist) and the JSON of `settings`."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in paths:
        if path.exists():
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()


class EngineCache:
    """Built engines (and their build info) keyed by a digest of the parsed ONNX and the settings."""

    def __init__(self, root: Path | None, product: str):
        self.dir = root / product if root is not None else None

    def load(self, key: str) -> tuple[bytes, dict] | None:
        if self.dir is None:
            return None
        engine, meta = self.dir / f"{key}.engine", self.dir / f"{key}.json"
        try:
            return engine.read_bytes(), json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def store(self, key: str, engine: bytes, meta: dict) -> None:
        if self.dir is None:
            return
        try:
            with staged_files(self.dir / f"{key}.engine") as tmp:
                tmp.write_bytes(engine)
                tmp.with_suffix(".json").write_text(json.dumps(meta))
        except (OSError, MlpdeployError):
            pass  # a cache that cannot be written only costs the next build its time


class TimingCache:
    """A builder timing cache kept in a file (datacenter TensorRT; TensorRT-RTX ignores timing caches)."""

    def __init__(self, root: Path | None, product: str, device_key: str):
        self.path = root / product / f"timing-{device_key}.cache" if root is not None else None
        self.loaded_bytes = 0
        self._config = None

    def attach(self, config) -> None:
        """Load the file (if any) into `config`'s timing cache; call before building."""
        if self.path is None:
            return
        data = self.path.read_bytes() if self.path.is_file() else b""
        cache = config.create_timing_cache(data)
        if not config.set_timing_cache(cache, False):  # a cache from another TensorRT or GPU: start afresh
            data = b""
            config.set_timing_cache(config.create_timing_cache(data), False)
        self.loaded_bytes, self._config = len(data), config

    def save(self) -> int:
        """Write the (grown) cache back atomically; returns its size in bytes."""
        if self.path is None or self._config is None:
            return 0
        data = bytes(self._config.get_timing_cache().serialize())
        try:
            with staged_files(self.path) as tmp:
                tmp.write_bytes(data)
        except (OSError, MlpdeployError):
            return 0
        return len(data)


# --- the GPU ---------------------------------------------------------------------------------

def visible_gpus() -> list[dict[str, str]]:
    """GPUs this process could run an engine on: name and compute capability (e.g. sm89)."""
    try:
        import torch

        if torch.cuda.is_available():
            return [
                {"name": torch.cuda.get_device_name(i), "sm": "sm%d%d" % torch.cuda.get_device_capability(i)}
                for i in range(torch.cuda.device_count())
            ]
    except Exception:  # a broken CUDA install is the same as no GPU here
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        name, _, cap = line.rpartition(",")
        if name and cap.strip():
            gpus.append({"name": name.strip(), "sm": "sm" + cap.strip().replace(".", "")})
    return gpus
