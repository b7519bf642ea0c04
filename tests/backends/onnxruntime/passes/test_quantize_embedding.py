"""quantize-embedding: a token embedding as INT4 GatherBlockQuantized computes, in ONNX Runtime CPU,
what the torch reference does with the table decoded from the same codes (the passes' reference edits, fed by
the passes' reports); a tied 4-bit lm_head's codes are shared (no bytes of its own); tables that
cannot or should not be quantized are left with a reason; bad options are one line."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.passes.pipeline import PassSpec, reference_edits, run_pipeline
from mlpdeploy.quant import make_format


class TinyLM(nn.Module):
    """ids → embedding → tanh → lm_head, the lm_head's weight tied to the table or not."""

    def __init__(self, vocab: int, dim: int, tied: bool, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        return self.lm_head(torch.tanh(self.embed(ids)))


def _passes(model: ir.Model, *specs: PassSpec) -> dict:
    """Each pass's report by its name (one of each here)."""
    return {report["pass"]: report for report in run_pipeline(model, list(specs))}


def _ids(vocab: int, batch: int, seq: int, seed: int = 1) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(0, vocab, (batch, seq)).astype(np.int64)
    ids[0, 0], ids[-1, -1] = 0, vocab - 1  # the first and last rows of the table
    return ids


def _reference(module: nn.Module, reports: dict, ids: np.ndarray) -> np.ndarray:
    reference = module
    for edit in reference_edits(list(reports.values())):  # what the passes declare for the torch reference
        reference = edit.apply(reference)
    with torch.no_grad():
        return reference(torch.from_numpy(ids)).numpy()


def _initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for v in model.graph.initializers.values())


@pytest.mark.parametrize("vocab, dim, batch, seq", [(97, 64, 1, 1), (300, 96, 3, 5)])
def test_tied_lm_head_shares_its_codes(h, vocab, dim, batch, seq):
    module = TinyLM(vocab, dim, tied=True)
    ids = _ids(vocab, batch, seq)
    model = h.export(module, (torch.from_numpy(ids),))
    reports = _passes(model, PassSpec("quantize-weights", {"format": "int4"}), PassSpec("quantize-embedding"))
    site = next(iter(reports["quantize-embedding"]["sites"].values()))
    assert site["bytes"] == 0 and "shares_codes_with" in site and site["linears"] == ["embed"]
    counts = h.op_counts(model)
    assert counts["GatherBlockQuantized"] == 1 and counts["Gather"] == 0 and counts["MatMulNBits"] == 1
    gbq = next(n for n in model.graph if n.op_type == "GatherBlockQuantized")
    nbits = next(n for n in model.graph if n.op_type == "MatMulNBits")
    assert gbq.inputs[0].producer().inputs[0] is nbits.inputs[1] and gbq.inputs[2] is nbits.inputs[2]  # the same initializers
    assert not any(v.const_value.dtype == ir.DataType.FLOAT and v.const_value.size >= vocab * dim for v in model.graph.initializers.values())
    h.checked(model)
    # the torch reference quantizes the lm_head and the embedding (each its own copy of the tied weight) alike
    np.testing.assert_allclose(h.run(model, {"ids": ids})[0], _reference(module, reports, ids), atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("block", [32, 64, 128])
def test_untied_table_gets_its_own_codes(h, block):
    vocab, dim = 130, 128
    module = TinyLM(vocab, dim, tied=False)
    ids = _ids(vocab, 2, 7)
    model = h.export(module, (torch.from_numpy(ids),))
    before = _initializer_bytes(model)
    reports = _passes(model, PassSpec("quantize-embedding", {"block": block}))
    site = reports["quantize-embedding"]["sites"]["embed"]
    fmt = make_format("int4", block)
    assert site["linears"] == ["embed"] and site["bytes"] == vocab * dim // 2 + vocab * (dim // block) * 4
    assert _initializer_bytes(model) == before - vocab * dim * 4 + site["bytes"]
    assert h.op_counts(model)["GatherBlockQuantized"] == 1 and h.op_counts(model)["MatMul"] == 1  # the untied head stays float
    h.checked(model)
    np.testing.assert_allclose(h.run(model, {"ids": ids})[0], _reference(module, reports, ids), atol=3e-5, rtol=1e-4)
    # and the reference is the table decoded from the codes (not the float table)
    table = module.embed.weight.detach().numpy()
    decoded = fmt.quantize(np.ascontiguousarray(table.T)).dequantize().T
    assert not np.array_equal(decoded, table)


@settings(max_examples=12, deadline=None)
@given(vocab=st.integers(1, 70), blocks=st.integers(1, 4), block=st.sampled_from([32, 64, 128]), seq=st.integers(1, 4),
       scale=st.sampled_from([1e-3, 1.0, 40.0]), seed=st.integers(0, 2**16))
def test_rows_are_the_decoded_codes(h, vocab, blocks, block, seq, scale, seed):
    """GatherBlockQuantized's rows equal quant's decode of the table, bit for bit, whatever the sizes."""
    dim = blocks * block
    rng = np.random.default_rng(seed)
    table = (rng.standard_normal((vocab, dim)) * scale).astype(np.float32)
    model = _table_graph(table, tied_head=False)
    _passes(model, PassSpec("quantize-embedding", {"block": block}))
    ids = rng.integers(0, vocab, (2, seq)).astype(np.int64)
    decoded = make_format("int4", block).quantize(np.ascontiguousarray(table.T)).dequantize().T
    np.testing.assert_array_equal(h.run(model, {"ids": ids})[0], decoded[ids])


def _table_graph(table: np.ndarray, tied_head: bool) -> ir.Model:
    """Gather(table, ids) (→ MatMul(rows, Transpose(table)) when `tied_head`: one initializer, as
    exports of large tied tables keep it)."""
    ids = ir.Value(name="ids", shape=ir.Shape(["batch", "seq"]), type=ir.TensorType(ir.DataType.INT64))
    weight = ir.Value(name="table", shape=ir.Shape(table.shape), type=ir.TensorType(ir.DataType.FLOAT), const_value=ir.tensor(table, name="table"))
    nodes = [ir.node("Gather", [weight, ids], {"axis": 0}, name="embed")]
    out = nodes[-1].outputs[0]
    out.dtype, out.shape = ir.DataType.FLOAT, ir.Shape(["batch", "seq", table.shape[1]])
    if tied_head:
        nodes.append(ir.node("Transpose", [weight], {"perm": [1, 0]}, name="lm_head_t"))
        nodes.append(ir.node("MatMul", [out, nodes[-1].outputs[0]], name="lm_head"))
        out = nodes[-1].outputs[0]
        out.dtype = ir.DataType.FLOAT
    out.name = "out"
    graph = ir.Graph([ids], [out], nodes=nodes, initializers=[weight], opset_imports={"": 20}, name="g")
    return ir.Model(graph, ir_version=10)


def test_tied_head_left_in_float_keeps_the_table(h):
    model = _table_graph(np.ones((64, 32), np.float32), tied_head=True)
    report = _passes(model, PassSpec("quantize-embedding"))["quantize-embedding"]
    assert report["rewritten"] == 0 and report["skipped"]["embed"] == (
        "the table is also read as float by Transpose (a tied lm_head left in float?); quantize that first (quantize-weights) or keep the table")
    assert h.op_counts(model)["GatherBlockQuantized"] == 0 and h.op_counts(model)["Gather"] == 1


def test_dim_not_a_whole_number_of_blocks_is_skipped(h):
    module = TinyLM(50, 40, tied=False)
    model = h.export(module, (torch.from_numpy(_ids(50, 1, 2)),))
    report = _passes(model, PassSpec("quantize-embedding"))["quantize-embedding"]
    assert report["skipped"] == {"embed": "embedding dim 40 is not a multiple of the block 32"}


def test_scope_leaves_other_embeddings(h):
    module = TinyLM(50, 32, tied=False)
    model = h.export(module, (torch.from_numpy(_ids(50, 1, 2)),))
    report = _passes(model, PassSpec("quantize-embedding", {"scope": "other.*"}))["quantize-embedding"]
    assert report["rewritten"] == 0 and report["kept"] == ["embed"]


@pytest.mark.parametrize("options, message", [
    ({"format": "nvfp4"}, "pass quantize-embedding: format=nvfp4 is not allowed; choose one of int4"),
    ({"block": "24"}, "pass quantize-embedding: block=24 is not allowed; choose one of 16, 32, 64, 128"),
    ({"target": "trt"}, "pass quantize-embedding: target='trt': GatherBlockQuantized runs in ONNX Runtime only; "
                        "build with --backend onnxruntime or leave the embedding in float"),
])
def test_bad_options_are_one_line(h, options, message):
    model = h.export(TinyLM(50, 32, tied=False), (torch.from_numpy(_ids(50, 1, 2)),))
    with pytest.raises(MlpdeployError) as err:
        _passes(model, PassSpec("quantize-embedding", options))
    assert str(err.value) == message


def test_tied_lm_head_quantized_alone_keeps_the_reference_embedding_in_float(h):
    """quantize-weights on a tied lm_head leaves the graph's embedding float; so does the torch
    reference (each quantized site gets a weight of its own, the tie is not followed)."""
    module = TinyLM(200, 64, tied=True)
    ids = _ids(200, 2, 5)
    model = h.export(module, (torch.from_numpy(ids),))
    reports = _passes(model, PassSpec("quantize-weights", {"format": "int4"}))
    assert h.op_counts(model)["Gather"] == 1 and h.op_counts(model)["MatMulNBits"] == 1
    (edit,) = reference_edits(list(reports.values()))
    reference = edit.apply(module)
    assert torch.equal(reference.embed.weight, module.embed.weight) and not torch.equal(reference.lm_head.weight, module.lm_head.weight)
    with torch.no_grad():
        want = reference(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(h.run(model, {"ids": ids})[0], want, atol=3e-5, rtol=1e-4)


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_built_model_keeps_one_copy_of_the_shared_codes(h, tmp_path, monkeypatch, external):
    """ONNX Runtime folds the embedding's Reshape view into a second copy of the codes when it saves
    the optimized model; the build puts the view back (one copy on disk, also when the weights sit in
    an external data file, as a real model's do), and the model computes the same."""
    import onnx

    from mlpdeploy import onnx_io
    from mlpdeploy.backends import get_backend
    from mlpdeploy.backends.onnxruntime import OrtOptions

    if external:
        monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD", 1024)
    module = TinyLM(300, 96, tied=True)
    ids = _ids(300, 2, 4)
    model = h.export(module, (torch.from_numpy(ids),))
    _passes(model, PassSpec("quantize-weights", {"format": "int4"}), PassSpec("quantize-embedding"))
    want = h.run(model, {"ids": ids})[0]
    onnx_io.save_onnx(model, tmp_path / "q.onnx")
    get_backend("onnxruntime").build(tmp_path / "q.onnx", tmp_path / "q.ort.onnx", OrtOptions(device="cpu"))
    data = tmp_path / "q.ort.onnx.data"
    assert data.exists() == external and not list(tmp_path.glob(".views.*"))
    if external:  # no second copy in the data file either: the codes (14,400 bytes) are stored once
        assert data.stat().st_size < (tmp_path / "q.onnx.data").stat().st_size + 14_400
    built = onnx.load(str(tmp_path / "q.ort.onnx"))
    codes = [t for t in built.graph.initializer if t.data_type == onnx.TensorProto.UINT8 and len(t.raw_data) == 300 * 96 // 2]
    assert len(codes) == 1  # the lm_head's codes, read by MatMulNBits and (through a Reshape) by GatherBlockQuantized
    assert any(n.op_type == "Reshape" and n.input[0] == codes[0].name for n in built.graph.node)
    np.testing.assert_allclose(h.session(built).run(None, {"ids": ids})[0], want, atol=1e-5, rtol=1e-5)


class WithPositionTable(nn.Module):
    """A token embedding plus a float table gathered by position (as some exports read a rotary cache)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(64, 32)
        self.register_buffer("angles", torch.randn(40, 32))

    def forward(self, ids, positions):
        angles = torch.index_select(self.angles, 0, positions.reshape(-1)).reshape(*positions.shape, -1)  # a Gather
        return self.embed(ids) * torch.cos(angles)


def test_only_embedding_lookups_are_quantized(h):
    ids = _ids(64, 2, 3)
    positions = np.arange(6, dtype=np.int64).reshape(2, 3)
    model = h.export(WithPositionTable(), (torch.from_numpy(ids), torch.from_numpy(positions)))
    gathers = [n for n in model.graph if n.op_type == "Gather"]
    assert len(gathers) == 2
    report = _passes(model, PassSpec("quantize-embedding"))["quantize-embedding"]
    assert list(report["sites"]) == ["embed"] and h.op_counts(model)["Gather"] == 1  # the angle table stays float
