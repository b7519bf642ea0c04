"""Load and save ONNX models with clear errors, external data for big models, atomically."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir

from mlpdeploy.atomic import staged_files
from mlpdeploy.errors import MlpdeployError

# The domains of standard ONNX ops ("ai.onnx" is the default domain spelled out).
STANDARD_DOMAINS = ("", "ai.onnx")

# Protobuf cannot serialize a model over 2 GiB; past this size weights go to an external data file.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def check_onnx_path(path: Path | str) -> Path:
    """`path` as a Path if it is an existing, parseable ONNX file, else a one-line error."""
    path = Path(path)
    if not path.exists():
        raise MlpdeployError(f"ONNX model {path} does not exist; pass the path of a .onnx file")
    if path.is_dir():
        raise MlpdeployError(f"{path} is a directory, not an ONNX model; pass the path of a .onnx file")
    return path


def load_onnx(path: Path | str, load_external_data: bool = True) -> onnx.ModelProto:
    """Parse an ONNX file, turning protobuf/IO failures into one-line errors."""
    path = check_onnx_path(path)
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # protobuf raises DecodeError, onnx raises various on truncated files
        raise MlpdeployError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); it may be truncated or not ONNX: re-export it"
        ) from None
    if not model.graph.node and not model.graph.output:
        raise MlpdeployError(f"{path} parsed but holds no graph; it is not an ONNX model: re-export it")
    return model


def load_ir(path: Path | str) -> ir.Model:
    """Load an ONNX file as an onnx_ir model (keeps node metadata_props, unlike graphsurgeon)."""
    return ir.from_proto(load_onnx(path))


def write_onnx(model: onnx.ModelProto | ir.Model, path: Path) -> None:
    """Write a model (not atomically: see `save_onnx`); past ~2 GB weights go to `<name>.data`."""
    model = ir.from_proto(model) if isinstance(model, onnx.ModelProto) else model
    if initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD:
        ir.save(model, path, external_data=path.name + ".data")
    else:
        ir.save(model, path)


def save_onnx(model: onnx.ModelProto | ir.Model, path: Path | str) -> Path:
    """Save a model atomically (with its external data file, if any)."""
    path = Path(path)
    with staged_files(path) as tmp:
        write_onnx(model, tmp)
    return path


def initializer_bytes(model: ir.Model) -> int:
    """Bytes held by the main graph's initializers."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
