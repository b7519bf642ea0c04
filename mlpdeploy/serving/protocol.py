"""The KServe v2 inference protocol's tensors, as Triton speaks it over HTTP: JSON tensors and the
binary-tensor extension (a JSON header of `Inference-Header-Content-Length` bytes, then each
binary tensor's raw little-endian bytes in order), requests in, responses out.

Pure functions on bytes and numpy; a bad request raises `RequestError(status, message)`, which the
app turns into Triton's error JSON `{"error": message}`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from mlpdeploy.serving.datatypes import FROM_V2, numpy_of_v2, v2_datatype

HEADER_LENGTH = "Inference-Header-Content-Length"


class RequestError(Exception):
    """A request the server refuses: HTTP `status` with a one-line `message`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    outputs: dict[str, bool] | None  # requested output → binary; None: every output
    binary_default: bool = False  # request parameter binary_data_output
    parameters: dict = field(default_factory=dict)


def _json(data: bytes, what: str):
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"malformed {what} JSON: {exc}") from None


def _shape(entry: dict, name: str) -> list[int]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise RequestError(400, f"input '{name}': shape must be a list of non-negative integers, got {shape!r}")
    return shape


def _tensor(entry: dict, binary: memoryview, offset: int) -> tuple[str, str, np.ndarray, int]:
    """One input tensor of the request; returns (name, datatype, array, new binary offset)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise RequestError(400, "every entry of 'inputs' needs a 'name'")
    name, datatype = entry["name"], entry.get("datatype")
    if datatype not in FROM_V2:
        raise RequestError(400, f"input '{name}': unsupported datatype {datatype!r}; this server takes {', '.join(FROM_V2)}")
    shape, dtype = _shape(entry, name), numpy_of_v2(datatype)
    count = int(np.prod(shape))
    size = (entry.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise RequestError(400, f"input '{name}': binary_data_size {size!r} runs past the request body")
        if size != count * dtype.itemsize:
            raise RequestError(400, f"input '{name}': unexpected binary size {size} bytes for shape {shape} of {datatype} ({count * dtype.itemsize} expected)")
        array = np.frombuffer(binary[offset:offset + size], dtype=dtype.newbyteorder("<")).reshape(shape)
        return name, datatype, array, offset + size
    if "data" not in entry:
        raise RequestError(400, f"input '{name}' has neither 'data' nor a binary_data_size parameter")
    try:
        array = np.asarray(entry["data"], dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RequestError(400, f"input '{name}': data is not {datatype}: {exc}") from None
    if array.size != count:
        raise RequestError(400, f"input '{name}': {array.size} values for shape {shape} ({count} expected)")
    return name, datatype, array.reshape(shape), offset


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request body (JSON, or JSON header + binary tensors) as arrays."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise RequestError(400, f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= split <= len(body):
            raise RequestError(400, f"{HEADER_LENGTH} {split} is beyond the body's {len(body)} bytes")
        header, binary = _json(body[:split], "request"), memoryview(body)[split:]
    else:
        header, binary = _json(body, "request"), memoryview(b"")
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise RequestError(400, "the request must be a JSON object with an 'inputs' list")
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError(400, "request 'parameters' must be a JSON object")
    inputs, datatypes, offset = {}, {}, 0
    for entry in header["inputs"]:
        name, datatype, array, offset = _tensor(entry, binary, offset)
        if name in inputs:
            raise RequestError(400, f"input '{name}' is given twice")
        inputs[name], datatypes[name] = array, datatype
    if offset != len(binary):
        raise RequestError(400, f"the request carries {len(binary) - offset} binary bytes that no input claims")
    outputs = None
    if header.get("outputs") is not None:
        if not isinstance(header["outputs"], list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in header["outputs"]):
            raise RequestError(400, "request 'outputs' must be a list of objects with a 'name'")
        outputs = {}
        for o in header["outputs"]:
            params = o.get("parameters") or {}
            if "classification" in params:
                raise RequestError(400, f"output '{o['name']}': the classification extension is not supported")
            outputs[o["name"]] = bool(params.get("binary_data", parameters.get("binary_data_output", False)))
    request_id = header.get("id")
    return InferRequest(None if request_id is None else str(request_id), inputs, datatypes, outputs,
                        bool(parameters.get("binary_data_output", False)), parameters)


def encode_infer_response(model: str, version: str, request: InferRequest, results: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The response body and, when any output goes binary, the JSON header's length."""
    wanted = request.outputs if request.outputs is not None else {name: request.binary_default for name in results}
    entries, chunks = [], []
    for name, binary in wanted.items():
        array = np.ascontiguousarray(results[name])
        entry = {"name": name, "datatype": v2_datatype(array.dtype), "shape": list(array.shape)}
        if binary:
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            flat = array.reshape(-1)
            entry["data"] = (flat.astype(np.float32) if entry["datatype"] == "BF16" else flat).tolist()
        entries.append(entry)
    response = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        response["id"] = request.id
    header = json.dumps(response, allow_nan=True).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)
