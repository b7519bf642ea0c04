"""The KServe v2 tensor codec against tritonclient's own request builder and response parser:
random dtypes, shapes (0, 1, odd, prime sizes) and extreme values round-trip exactly, in JSON and binary."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mlpdeploy.serving.protocol import InferRequest, RequestError, encode_infer_response, parse_infer_request

http_client = pytest.importorskip("tritonclient.http", reason="needs tritonclient (dev extra)")
Client = http_client.InferenceServerClient

DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16, "UINT32": np.uint32, "INT32": np.int32,
          "INT64": np.int64, "UINT64": np.uint64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}

arrays = st.sampled_from(sorted(DTYPES)).flatmap(lambda name: st.tuples(st.just(name), hnp.arrays(
    DTYPES[name], hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=7),
    elements=None if DTYPES[name] is not np.float16 else st.floats(width=16, allow_nan=False))))


@settings(max_examples=60, deadline=None)
@given(tensors=st.lists(arrays, min_size=1, max_size=3), binary=st.booleans())
def test_request_and_response_round_trip(tensors, binary):
    inputs = []
    for k, (name, array) in enumerate(tensors):
        tensor = http_client.InferInput(f"x{k}", list(array.shape), name)
        tensor.set_data_from_numpy(array, binary_data=binary or np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all())
        inputs.append(tensor)
    body, header_length = Client.generate_request_body(inputs, request_id="7")
    request = parse_infer_request(body, None if header_length is None else str(header_length))
    assert request.id == "7" and request.outputs is None and request.binary_default  # no outputs named: all, binary
    for k, (name, array) in enumerate(tensors):
        got = request.inputs[f"x{k}"]
        assert request.datatypes[f"x{k}"] == name and got.dtype == array.dtype and got.shape == array.shape
        np.testing.assert_array_equal(got, array)
    for out_binary in (True, False):
        wanted = InferRequest(None, {}, {}, {f"x{k}": out_binary for k in range(len(tensors))})
        encoded, length = encode_infer_response("m", "1", wanted, request.inputs)
        if not out_binary and any(np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all() for _, a in tensors):
            continue  # NaN / inf have no JSON form (Triton sends such tensors binary as well)
        result = Client.parse_response_body(encoded, header_length=length)
        for k, (_, array) in enumerate(tensors):
            np.testing.assert_array_equal(result.as_numpy(f"x{k}"), array)


@pytest.mark.parametrize("body, message", [
    (b'{"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]}, {"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}]}',
     "input 'a' is given twice"),
    (b'{"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}', "needs a 'name'"),
    (b'{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}]}', "neither 'data' nor a binary_data_size"),
    (b'{"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 3}}]}', "classification extension is not supported"),
    (b'{"inputs": [], "parameters": [1]}', "'parameters' must be a JSON object"),
])
def test_request_errors(body, message):
    with pytest.raises(RequestError, match=message) as info:
        parse_infer_request(body, None)
    assert info.value.status == 400


def test_unclaimed_binary_bytes():
    body = b'{"inputs": []}' + b"\0" * 4
    with pytest.raises(RequestError, match="4 binary bytes that no input claims"):
        parse_infer_request(body, "14")
