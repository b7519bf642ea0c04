"""`mlpdeploy bench` in latency mode: a MODEL compiled on the spot or a built artifact; errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from mlpdeploy.cli import cli
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.runtime.latency import measure_latency, model_bytes

FAST = ["--warmup", "1", "--iterations", "3", "--min-seconds", "0"]


@pytest.fixture(scope="module")
def tiny_dir(tiny_spec, tmp_path_factory):
    from mlpdeploy.compile import compile_model

    out = tmp_path_factory.mktemp("bench") / "tiny"
    assert compile_model(tiny_spec, out)["passed"]
    return out


def _check_rows(data: dict, batches: list[int]) -> None:
    assert [r["dims"]["batch"] for r in data["results"]] == batches and data["mode"] == "latency"
    for r in data["results"]:
        assert r["runs"] >= 3 and 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput"] == pytest.approx(r["samples"] * r["runs"] / (r["mean_ms"] * r["runs"] / 1e3), rel=1e-6)
    assert data["peak_rss_bytes"] > 50 * 2**20


def test_model_spec_is_compiled_then_timed(tiny_spec, tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(cli, ["bench", tiny_spec, "--batch", "1", "--batch", "3", *FAST, "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    _check_rows(data, [1, 3])
    assert data["model_bytes"] > 0 and "p99 ms" in result.output


def test_artifact_dir_with_dims(tiny_dir, tmp_path):
    out = tmp_path / "bench.json"
    dims = json.loads((tiny_dir / "report.json").read_text())
    result = CliRunner().invoke(cli, ["bench", str(tiny_dir), "--batch", "2", *FAST, "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    _check_rows(data, [2])
    built = tiny_dir / dims["artifacts"]["build_model"].split("/")[-1]
    assert data["model_bytes"] == model_bytes(built) >= built.stat().st_size


@pytest.mark.parametrize("args, message", [
    (["--dim", "seq"], "--dim 'seq' must be NAME=SIZE with a size >= 0"),
    (["--dim", "colour=3"], "--dim colour: the artifact has no such dynamic dim"),
    (["--decode"], "has no KV cache; --decode needs a `compile --kv-cache` artifact"),
    (["--batch", "100000"], "dim batch=100000 is outside the exported range"),
])
def test_errors(tiny_dir, args, message):
    result = CliRunner().invoke(cli, ["bench", str(tiny_dir), *args, *FAST])
    assert result.exit_code == 2 and message in result.output, result.output


def test_cached_decoder_needs_decode_mode(zoo_export):
    _, path = zoo_export("llama-tiny", kv_cache=True)
    result = CliRunner().invoke(cli, ["bench", str(path), *FAST])
    assert result.exit_code == 2 and "is a cached decoder; time it with --decode" in result.output, result.output


def test_model_bytes_counts_external_data(tmp_path):
    weight = onnx.numpy_helper.from_array(np.ones((256, 256), np.float32), "w")
    graph = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 256])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 256])], [weight])
    path = tmp_path / "m.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.data", size_threshold=0)
    assert model_bytes(path) == path.stat().st_size + (tmp_path / "m.data").stat().st_size >= 256 * 256 * 4


def test_measure_latency_protocol():
    calls = []
    stats = measure_latency(lambda: calls.append(1), {"batch": 4}, 4, warmup=2, iterations=5, min_seconds=0)
    assert len(calls) == 7 and stats.runs == 5 and stats.samples == 4
    with pytest.raises(MlpdeployError, match="iterations >= 1"):
        measure_latency(lambda: None, {}, 1, iterations=0)
