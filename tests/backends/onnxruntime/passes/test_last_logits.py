"""ort-decoder's `logits_to_keep` input: the lm_head on the last N positions only, every position
when it is not fed — equal to the full graph's last columns for any batch, length, cache and padding."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlpdeploy.backends.onnxruntime.passes.last_logits import keep_last_logits
from mlpdeploy.contract import LOGITS_TO_KEEP
from mlpdeploy.export import export_model
from mlpdeploy.model import load_model
from mlpdeploy.model.kv_cache import with_kv_cache
from mlpdeploy.onnx_io import load_ir, save_onnx
from mlpdeploy.passes import PassSpec, run_pipeline


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lastlogits")
    path = export_model(with_kv_cache(load_model("llama-tiny")), folder / "m.onnx").model_path
    model = load_ir(path)
    report = run_pipeline(model, [PassSpec("ort-decoder", {"max_positions": 128})])[0]
    save_onnx(model, folder / "fused.onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return report, ort.InferenceSession(str(folder / "fused.onnx"), options, providers=["CPUExecutionProvider"])


def _feed(session, batch, seq, past, pad, rng):
    mask = np.ones((batch, past + seq), np.int64)
    mask[0, :pad] = 0
    feed = {"input_ids": rng.integers(0, 256, (batch, seq)).astype(np.int64), "attention_mask": mask,
            "position_ids": np.maximum(mask.cumsum(-1) - 1, 0)[:, -seq:]}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values"):
            feed[spec.name] = rng.standard_normal((batch, spec.shape[1], past, spec.shape[3])).astype(np.float32)
    return feed


def test_the_input_is_optional_and_overridable(fused):
    report, session = fused
    assert report["fusions"]["logits for the last positions"] == 1 and "logits for the last positions" not in report["skipped"]
    assert LOGITS_TO_KEEP in {i.name for i in session.get_overridable_initializers()}
    assert LOGITS_TO_KEEP not in {i.name for i in session.get_inputs()}  # not required: callers that do not know it are unchanged
    feed = _feed(session, 2, 5, 3, 1, np.random.default_rng(0))
    assert session.run(["logits"], feed)[0].shape == (2, 5, 256)


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), seq=st.sampled_from([1, 2, 3, 7, 11]), past=st.sampled_from([0, 1, 5, 13]), keep=st.integers(1, 13),
       pad=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_kept_logits_are_the_last_columns_of_the_full_run(fused, batch, seq, past, keep, pad, seed):
    _, session = fused
    feed = _feed(session, batch, seq, past, min(pad, past + seq - 1), np.random.default_rng(seed))
    full = session.run(["logits"], feed)[0]
    kept = session.run(["logits"], {**feed, LOGITS_TO_KEEP: np.array([keep], np.int64)})[0]
    assert kept.shape == (batch, min(keep, seq), full.shape[-1])
    np.testing.assert_allclose(kept, full[:, seq - kept.shape[1]:], atol=1e-6, rtol=1e-6)


def _graph(op: str) -> ir.Model:
    x = ir.Value(name="x", shape=ir.Shape([1, "seq", 4]), type=ir.TensorType(ir.DataType.FLOAT))
    node = ir.node(op, [x], name="head")
    node.outputs[0].name = "logits"
    node.outputs[0].shape, node.outputs[0].type = ir.Shape([1, "seq", 4]), ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([x], [node.outputs[0]], nodes=[node], opset_imports={"": 20})
    return ir.Model(graph, ir_version=10)


def test_logits_not_from_a_matmul_are_left_as_they_are():
    model = _graph("Relu")
    assert keep_last_logits(model) == "logits come from Relu, not a MatMul"
    assert [v.name for v in model.graph.inputs] == ["x"] and len(model.graph) == 1
