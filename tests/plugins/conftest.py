"""Plugin tests: Triton runs in its CPU interpreter unless TRITON_INTERPRET is already set.

bench/gpu.sh sets TRITON_INTERPRET=0 to run the same kernel tests compiled on a GPU. The
variable must be set before triton is first imported; kernel modules import it lazily.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Max-abs error allowed, relative to max(1, max|reference|), for a result computed in a dtype
# and compared with the fp32 reference on the same (rounded) inputs. fp16/bf16: a few units of
# the format's epsilon (2^-10 / 2^-7) for the fp16-rounded hidden activations and output.
TOLERANCE = {"float32": 2e-5, "float16": 5e-3, "bfloat16": 4e-2}


def _assert_close(actual, reference, dtype: str, what: str = "") -> float:
    actual = np.asarray(actual, dtype=np.float32)
    reference = np.asarray(reference, dtype=np.float32)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    scale = max(1.0, float(np.abs(reference).max(initial=0.0)))
    err = float(np.abs(actual - reference).max(initial=0.0))
    assert np.isfinite(actual).all(), f"{what}: non-finite output"
    assert err <= TOLERANCE[dtype] * scale, f"{what}: max error {err:.3g} > {TOLERANCE[dtype]} x {scale:.3g} ({dtype})"
    return err


@pytest.fixture
def assert_close():
    return _assert_close


@pytest.fixture(scope="session")
def ort_session():
    """`ort_session(model)`: an ONNX Runtime CPU session, one thread, graph optimizations off (so
    ONNX Runtime's own fusions cannot hide or fake ours)."""
    import onnx_ir as ir
    import onnxruntime as ort

    def make(model):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        return ort.InferenceSession(ir.to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])

    return make
