"""Load and save ONNX models with clear errors, external data for big models, atomically."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir

from mlpdeploy.atomic import staged_files
from mlpdeploy.contract import DOMAIN, MS_DOMAIN, STANDARD_DOMAINS
from mlpdeploy.errors import MlpdeployError, first_line

# Domains whose ops some backend here implements: standard ONNX and ONNX-ML, ONNX Runtime's contrib ops
# (and the layouts of its optimized graphs), onnxruntime-extensions, and mlpdeploy's own ops.
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", MS_DOMAIN, f"{MS_DOMAIN}.nchwc", "com.ms.internal.nhwc", "ai.onnx.contrib", DOMAIN)
MIN_OPSET = 7  # the oldest ONNX Runtime runs

# Past this many bytes of weights, a model is written with its weights in an external data file
# `<name>.data` beside it. Protobuf cannot serialize a model over 2 GiB at all, and writing one in
# a single message holds two more copies of its weights in memory (the message and its bytes);
# with external data, weights stream to disk one at a time, and readers (onnx_ir, ONNX Runtime)
# memory-map them instead of copying (measured on SmolLM2-135M, 538 MB: ONNX Runtime's build
# peaked at 1.8 GB from one file, 0.8 GB from external data).
EXTERNAL_DATA_THRESHOLD = 64 * 2**20
# Tensors over 1 MiB start on 64 KiB boundaries in the data file, so they can be memory-mapped.
EXTERNAL_DATA_ALIGNMENT = 2**16


def check_onnx_path(path: Path | str) -> Path:
    """`path` as a Path if it is an existing, parseable ONNX file, else a one-line error."""
    path = Path(path)
    if not path.exists():
        raise MlpdeployError(f"ONNX model {path} does not exist; pass the path of a .onnx file")
    if path.is_dir():
        raise MlpdeployError(f"{path} is a directory, not an ONNX model; pass the path of a .onnx file")
    return path


def load_onnx(path: Path | str, load_external_data: bool = True) -> onnx.ModelProto:
    """Parse an ONNX file, turning protobuf/IO failures into one-line errors; refuse a model no
    backend here can run (`check_contract`) before reading its external data."""
    path = check_onnx_path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, onnx raises various on truncated files
        raise MlpdeployError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); it may be truncated or not ONNX: re-export it"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise MlpdeployError(f"{path} parsed but holds no graph; it is not an ONNX model: re-export it")
    check_contract(model, path)
    if load_external_data:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise MlpdeployError(f"cannot read the external data of {path} ({type(exc).__name__}: {first_line(exc)}); re-export it") from None
    return model


def check_contract(model: onnx.ModelProto, path: Path) -> None:
    """One-line errors for what would fail later, deep in a library: an opset outside what the
    installed onnx knows, an op of a domain nothing here implements, external data that is
    missing, short, or outside the model's directory."""
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)
    newest = onnx.defs.onnx_opset_version()
    if opset is not None and not MIN_OPSET <= opset <= newest:
        raise MlpdeployError(f"{path} uses ONNX opset {opset}; supported are {MIN_OPSET}..{newest} (onnx {onnx.__version__}): "
                             "re-export it with --opset 20 (or convert it with onnx.version_converter)")
    functions = {(f.domain, f.name) for f in model.functions}
    for node in model.graph.node:
        plugin = any(a.name == "plugin_namespace" for a in node.attribute)  # a TensorRT plugin: its backend decides
        if node.domain not in KNOWN_DOMAINS and (node.domain, node.op_type) not in functions and not plugin:
            raise MlpdeployError(f"{path}: node {node.name!r} is {node.domain}::{node.op_type}, an op of a domain no backend here "
                                 f"implements and the model defines no function for (known domains: {', '.join(KNOWN_DOMAINS[1:])}); "
                                 "export the op with its ONNX function body")
    _check_external_data(model, path)


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    base = path.parent.resolve()
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).resolve()
        if Path(location).is_absolute() or not target.is_relative_to(base):
            raise MlpdeployError(f"{path}: weight {tensor.name!r} points at external data {location!r}, outside the model's directory; "
                                 "refusing to read it: keep the external data file beside the model")
        if not target.is_file():
            raise MlpdeployError(f"{path}: weight {tensor.name!r} needs external data file {location!r}, which is missing beside the model; "
                                 "copy it next to the model (or re-export)")
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        if end > target.stat().st_size:
            raise MlpdeployError(f"{path}: external data file {location!r} ends at byte {target.stat().st_size}, but weight "
                                 f"{tensor.name!r} needs bytes up to {end}: it is truncated; copy it again (or re-export)")


def load_ir(path: Path | str) -> ir.Model:
    """Load an ONNX file as an onnx_ir model (keeps node metadata_props, unlike graphsurgeon).

    Weights in external data stay in their file, memory-mapped, until something reads them."""
    path = check_onnx_path(path)
    model = ir.from_proto(load_onnx(path, load_external_data=False))
    ir.external_data.set_base_dir(model.graph, path.parent)
    return model


def write_onnx(model: onnx.ModelProto | ir.Model, path: Path) -> None:
    """Write a model (not atomically: see `save_onnx`); past EXTERNAL_DATA_THRESHOLD bytes of
    weights they go to `<name>.data` beside it."""
    model = ir.from_proto(model) if isinstance(model, onnx.ModelProto) else model
    if initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD:
        ir.save(model, path, external_data=path.name + ".data", alignment=EXTERNAL_DATA_ALIGNMENT)
    else:
        ir.external_data.load_to_model(model)  # weights read from another file travel inside this one
        ir.save(model, path)


def external_data_folder(model: ir.Model) -> Path | None:
    """The directory the main graph's external data files are read from, or None (all in memory)."""
    folders = {Path(t.base_dir) for v in model.graph.initializers.values() if isinstance(t := v.const_value, ir.ExternalTensor)}
    if len(folders) > 1:
        raise MlpdeployError(f"the model reads external data from several directories ({', '.join(map(str, sorted(folders)))}); "
                             "save it again so its weights sit beside it")
    return folders.pop() if folders else None


def save_onnx(model: onnx.ModelProto | ir.Model, path: Path | str) -> Path:
    """Save a model atomically (with its external data file, if any)."""
    path = Path(path)
    with staged_files(path) as tmp:
        write_onnx(model, tmp)
    return path


def initializer_bytes(model: ir.Model) -> int:
    """Bytes held by the main graph's initializers."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
