"""What TensorRT says, captured and read: the build log, parser errors with node and op, layer lists, I/O.

Every function takes the TensorRT module (`tensorrt_rtx_bindings` or `tensorrt`) as an argument
where it needs one; none imports either.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from pathlib import Path
from typing import Any

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
