"""Code shared by the `tensorrt-rtx` and `tensorrt` backends: parse + build driver, the captured
build log, parser errors with node and op, layer lists, caches on disk, plugin-node checks.

Both TensorRT Python modules (`tensorrt_rtx_bindings`, `tensorrt`) have the same builder API;
every function here takes the module as its first argument instead of importing one.

Caches live under `BuildOptions.extra["cache_dir"]`, else `$MLPDEPLOY_CACHE_DIR`, else
`~/.cache/mlpdeploy`; `extra["cache"] = False` turns them off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import onnx_ir as ir

from ..atomic import staged_files
from ..errors import MlpdeployError
from .trt_shapes import Triple

# Domains whose ops the TensorRT ONNX parser imports itself; a node in any other domain with no
# model-local function is looked up in the plugin registry by its op_type.
STANDARD_DOMAINS = ("", "ai.onnx")
PLUGIN_ATTRIBUTES = ("plugin_namespace", "plugin_version")
MAX_ERRORS_SHOWN = 3


# --- the build log ---------------------------------------------------------------------------

_LOGGERS: dict[str, Any] = {}
_BUILD_LOCK = threading.Lock()


def logger_for(trt):
    """The process-wide capturing logger for a TensorRT module.

    TensorRT keeps the first logger a process gives it and ignores later ones, so there is one
    logger per module and each build points its sink at a fresh list (under a lock).
    """
    if trt.__name__ not in _LOGGERS:

        class CapturingLogger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.sink: list[tuple[str, str]] | None = None

            def log(self, severity, msg):
                if self.sink is not None:
                    self.sink.append((str(severity).rsplit(".", 1)[-1], str(msg)))

        _LOGGERS[trt.__name__] = CapturingLogger()
    return _LOGGERS[trt.__name__]


@contextlib.contextmanager
def captured_log(trt):
    """Run a TensorRT call with its log captured: yields (logger, records)."""
    logger = logger_for(trt)
    records: list[tuple[str, str]] = []
    with _BUILD_LOCK:
        logger.sink = records
        try:
            yield logger, records
        finally:
            logger.sink = None


def log_lines(records: list[tuple[str, str]], verbose: bool = False) -> list[str]:
    """`SEVERITY: message` lines (VERBOSE ones only if asked)."""
    return [f"{sev}: {msg}" for sev, msg in records if verbose or sev != "VERBOSE"]


def first_error(records: list[tuple[str, str]]) -> str | None:
    for sev, msg in records:
        if sev in ("ERROR", "INTERNAL_ERROR"):
            return " ".join(msg.split())
    return None


# --- parsing ---------------------------------------------------------------------------------

def format_parser_errors(parser, model_path: Path, product: str) -> str:
    """One line naming each failing node (name and op type) and what the parser said."""
    errors = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        name, op = err.node_name() or f"#{err.node()}", err.node_operator() or "?"
        where = f"node {name!r} ({op})"
        stack = list(err.local_function_stack()) if err.local_function_stack_size() else []
        if stack:
            where += f" inside function {' > '.join(stack)}"
        desc = " ".join(err.desc().split())
        if desc in ("", "false"):  # the parser's checkers often say only "false": give the code instead
            desc = f"{str(err.code()).rsplit('.', 1)[-1].lower().replace('_', ' ')} ({err.func()})"
        errors.append(f"{where}: {desc}")
    shown = "; ".join(errors[:MAX_ERRORS_SHOWN])
    more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
    return f"{product} cannot parse {model_path.name}: {shown or 'unknown parser error'}{more}"


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


# --- layers ----------------------------------------------------------------------------------

_LAYER = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*),.*?TacticName: (?P<tactic>[^,]*),.*?Metadata: (?P<meta>.*)$")


def network_layers(network) -> list[dict[str, str]]:
    """The parsed network's layers (before optimization): name, type, output dtype."""
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        dtype = str(layer.get_output(0).dtype).rsplit(".", 1)[-1] if layer.num_outputs else ""
        layers.append({"name": layer.name, "type": str(layer.type).rsplit(".", 1)[-1], "dtype": dtype})
    return layers


def engine_layers_from_log(records: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The engine's layers as the builder reports them (ProfilingVerbosity.DETAILED).

    The builder logs the same listing the engine inspector gives; read from the log it needs
    no GPU (the inspector needs a deserialized engine, which needs one).
    """
    for _, msg in records:
        if msg.startswith("Layers:\n"):
            body = msg[len("Layers:\n"):].split("\n\n", 1)[0]
            layers = []
            for line in body.splitlines():
                m = _LAYER.match(line)
                if m:
                    onnx_nodes = re.findall(r"\[ONNX Layer: ([^\]]*)\]", m["meta"])
                    layers.append({"name": m["name"], "type": m["type"], "tactic": m["tactic"], "onnx_nodes": onnx_nodes})
            return layers
    return []


_IO = re.compile(r"^\s*Name: (?P<name>.*?), IOMode: (?P<mode>\w+), DataType: (?P<dtype>\w+), Dimensions: \[(?P<dims>[^\]]*)\]")
_PROFILE = re.compile(r"MinShape: \[(?P<min>[^\]]*)\], OptShape: \[(?P<opt>[^\]]*)\], MaxShape: \[(?P<max>[^\]]*)\]")


def engine_io_from_log(records: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """The engine's I/O tensors as the builder reports them: mode, dtype, dims, and profile shapes for inputs."""
    ints = lambda text: [int(d) for d in text.split(",") if d.strip()]  # noqa: E731
    for _, msg in records:
        if msg.startswith("Layers:\n") and "I/O Tensors:" in msg:
            io = {}
            for line in msg.split("I/O Tensors:", 1)[1].splitlines():
                m = _IO.match(line)
                if not m:
                    continue
                entry: dict[str, Any] = {"mode": m["mode"].lower(), "dtype": m["dtype"], "dims": ints(m["dims"])}
                p = _PROFILE.search(line)
                if p:
                    entry.update(min=ints(p["min"]), opt=ints(p["opt"]), max=ints(p["max"]))
                io[m["name"]] = entry
            return io
    return {}


def engine_layers_from_inspector(trt, engine) -> list[dict[str, Any]]:
    """The engine's layers through the engine inspector (needs a deserialized engine)."""
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):
            layers.append({"name": layer})
        else:
            layers.append({"name": layer.get("Name", ""), "type": layer.get("LayerType", ""), "tactic": layer.get("TacticName", "")})
    return layers


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
) -> EngineBuild:
    """Parse `onnx_path` into a strongly typed network and build it with one optimization profile.

    `configure(config, builder)` sets the backend's own options (targets, timing cache);
    `explain_failure(log)` turns a failed build's log into a one-line message.
    """
    with captured_log(trt) as (logger, records):
        start = time.perf_counter()
        builder = trt.Builder(logger)
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
