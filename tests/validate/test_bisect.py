"""`validate --bisect` finds the first layer over tolerance; `--reduce` writes the smallest module
scope over it, with its inputs and torch's output in Polygraphy's formats, and the divergence
replays from those files alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from mlpdeploy.cli import cli
from mlpdeploy.export.torch_export import export_model
from mlpdeploy.model.inputs import generate_inputs
from mlpdeploy.model.source import load_model
from mlpdeploy.validate.bisect import bisect_layers, reduce_divergence, within
from mlpdeploy.validate.tolerance import tolerances

SPEC = f"{Path(__file__).parents[1] / 'fixtures' / 'tiny_mlp.py'}:build_stack"
ABSOLUTE = tolerances("fp32", atol=1e-4, rtol=1e-3)  # a fixed atol, as --atol gives
SCALED = tolerances("fp32")  # the default: atol 1e-3 × each output's RMS


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The 3-block stack exported, and a copy whose blocks.1.mlp.down_proj weight is off by 50%."""
    tmp = tmp_path_factory.mktemp("bisect")
    bundle = load_model(SPEC)
    exported = export_model(bundle, tmp / "stack.onnx")
    model = onnx.load(str(exported.model_path))
    for init in model.graph.initializer:
        if init.name == "blocks.1.mlp.down_proj.weight_t":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    bad = tmp / "bad.onnx"
    onnx.save(model, str(bad))
    (tmp / "bad.manifest.json").write_text(exported.manifest_path.read_text())
    return bundle, exported.model_path, bad, generate_inputs(bundle.inputs, seed=0)


def test_within_is_polygraphys_elementwise_rule():
    ref = np.array([1.0, 100.0])
    assert within(np.array([1.00005, 100.05]), ref, atol=1e-4, rtol=1e-3)  # 1st by atol, 2nd by rtol
    assert not within(np.array([1.01, 100.0]), ref, atol=1e-4, rtol=1e-3)
    assert not within(np.array([np.nan, 100.0]), ref, atol=1e-4, rtol=1e-3)


def test_bisect_names_the_perturbed_sublayer_and_the_last_good_one(stack):
    bundle, good, bad, feed = stack
    for tolerance in (ABSOLUTE, SCALED):
        clean = bisect_layers(bundle, good, feed, tolerance)
        assert clean.first is None and all(e.passed for e in clean.errors.values())
        report = bisect_layers(bundle, bad, feed, tolerance)
        assert report.first == "blocks.1.mlp"
        assert report.last_good == "blocks.1.norm"
    order = list(report.errors)
    assert order.index("blocks.0") < order.index("blocks.1.norm") < order.index("blocks.1.mlp") < order.index("blocks.1")
    assert not report.errors["blocks.2"].passed  # later layers inherit the error; bisect names the first


def test_reduce_writes_the_smallest_diverging_scope_that_replays(stack, tmp_path):
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    bundle, _, bad, feed = stack
    out = tmp_path / "reduced.onnx"
    reduced = reduce_divergence(bundle, bad, feed, SCALED, out)
    assert reduced["scope"] == "blocks.1.mlp.down_proj"  # the Linear whose weight is off: smaller than blocks.1.mlp
    assert reduced["reproduces"] and reduced["nodes"] < reduced["graph_nodes"]
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    feeds = load_json(str(out.with_suffix(".inputs.json")))
    results = RunResults.load(str(out.with_suffix(".reference.json")))
    import onnxruntime as ort

    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    want = results["torch"][0][reduced["output"]]
    assert got.shape == want.shape and not within(got, want, 1e-4, 1e-3)
    assert reduce_divergence(bundle, stack[1], feed, SCALED, tmp_path / "none.onnx") is None
    assert not (tmp_path / "none.onnx").exists()


def test_cli_bisect_and_reduce(stack, tmp_path):
    _, good, bad, _ = stack
    out, report = tmp_path / "r.onnx", tmp_path / "val.json"
    result = CliRunner().invoke(cli, ["validate", "--reference", SPEC, "--candidate", str(bad), "--bisect", "--reduce", str(out),
                                      "--json", str(report)])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "first diverging layer blocks.1.mlp" in text and "after blocks.1.norm" in text
    assert "reduce: blocks.1.mlp.down_proj" in text and "reproduces" in text
    data = json.loads(report.read_text())["bisect"]
    assert data["first_diverging"] == "blocks.1.mlp" and data["reduced"]["reproduces"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.inputs.json", "r.onnx", "r.reference.json", "val.json"]
    result = CliRunner().invoke(cli, ["validate", "--reference", SPEC, "--candidate", str(good), "--bisect", "--reduce", str(tmp_path / "x.onnx")])
    assert result.exit_code == 0 and "every layer matches" in result.output and "nothing written" in result.output


def test_bisect_needs_a_torch_reference(stack):
    _, good, _, _ = stack
    result = CliRunner().invoke(cli, ["validate", "--reference", str(good), "--candidate", str(good), "--bisect"])
    assert result.exit_code == 2 and "give a MODEL as --reference" in result.output


def test_bisect_a_tensorrt_rtx_engine_through_its_parsed_graph(stack, tmp_path):
    pytest.importorskip("tensorrt_rtx_bindings", reason="needs the rtx extra")
    from mlpdeploy.backends import BuildOptions, get_backend, load_candidate
    from mlpdeploy.validate import ValidateOptions, validate

    bundle, _, bad, _ = stack
    get_backend("tensorrt-rtx").build(bad, tmp_path / "bad.engine", BuildOptions())
    report = validate(bundle, load_candidate(tmp_path / "bad.engine"), ValidateOptions(bisect=True))
    assert report.bisect["first_diverging"] == "blocks.1.mlp" and report.bisect["last_matching"] == "blocks.1.norm"
