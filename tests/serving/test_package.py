"""`mlpdeploy package --triton`: the repository's config.pbtxt parsed with Triton's ModelConfig schema
(tritonclient's packaged model_config_pb2), the model files, and the KServe InferenceService."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from click.testing import CliRunner
from google.protobuf import text_format

from mlpdeploy.cli import cli
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.model.kv_cache import CacheLayout
from mlpdeploy.model.manifest import find_manifest
from mlpdeploy.serving.package import package_triton
from mlpdeploy.serving.triton_config import TritonOptions

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="needs tritonclient[grpc] (dev extra)")


def _parse(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_batched_model(tmp_path, zoo_build):
    built = zoo_build("mixer-tiny")
    result = CliRunner().invoke(cli, ["package", str(built), "--triton", str(tmp_path / "repo"), "--max-batch-size", "8", "--instances", "2"])
    assert result.exit_code == 0, result.output
    config = _parse(tmp_path / "repo" / "mixer-tiny" / "config.pbtxt")
    assert config.name == "mixer-tiny" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 8
    [inp], [out] = config.input, config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("pixel_values", model_config_pb2.TYPE_FP32, [3, 32, 32])
    assert (out.name, out.data_type, list(out.dims)) == ("logits", model_config_pb2.TYPE_FP32, [10])
    assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert not config.HasField("optimization")  # the build's ORT_ENABLE_ALL: the Triton ORT backend's default level
    assert config.parameters["intra_op_thread_count"].string_value == "0"
    assert (tmp_path / "repo" / "mixer-tiny" / "1" / "model.onnx").read_bytes() == built.read_bytes()


def test_max_batch_size_capped_and_threads_carried(tmp_path, zoo_build):
    built = zoo_build("mixer-tiny")
    model = tmp_path / "m" / "mixer.ort.onnx"
    model.parent.mkdir()
    for f in built.parent.glob("mixer-tiny.ort.*"):
        shutil.copy(f, model.parent / f.name.replace("mixer-tiny", "mixer"))
    session = json.loads((model.parent / "mixer.ort.session.json").read_text())
    (model.parent / "mixer.ort.session.json").write_text(json.dumps({**session, "intra_op_num_threads": 3, "graph_optimization_level": "ORT_ENABLE_BASIC"}))
    package_triton([model], tmp_path / "repo", TritonOptions(max_batch_size=100_000))
    config = _parse(tmp_path / "repo" / "mixer" / "config.pbtxt")
    assert config.max_batch_size == find_manifest(model).dims["batch"][1] == 4096
    assert config.parameters["intra_op_thread_count"].string_value == "3" and config.optimization.graph.level == -1


def test_cached_decoder_gets_sequence_batching_with_implicit_state(tmp_path, zoo_build):
    built = zoo_build("llama-tiny", kv_cache=True)
    package_triton([built], tmp_path / "repo")
    config = _parse(tmp_path / "repo" / "llama-tiny-kv" / "config.pbtxt")
    layout = CacheLayout.from_json(find_manifest(built).cache)
    assert config.max_batch_size == 1 and not config.HasField("dynamic_batching")
    assert [(i.name, list(i.dims)) for i in config.input] == [("input_ids", [-1]), ("attention_mask", [-1]), ("position_ids", [-1])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("logits", [-1, 256])]
    states = config.sequence_batching.state
    pairs = [(n, o) for layer in layout.layers for n, o in zip(layout.input_names(layer), layout.output_names(layer))]
    assert [(s.input_name, s.output_name) for s in states] == pairs and len(pairs) == 2 * len(layout.layers)
    for s in states:
        assert list(s.dims) == [layout.kv_heads, -1, layout.head_dim] and s.data_type == model_config_pb2.TYPE_FP32
        [init] = s.initial_state
        assert list(init.dims) == [layout.kv_heads, 0, layout.head_dim] and init.WhichOneof("state_data") == "zero_data"


def test_kserve_inference_service(tmp_path, zoo_build):
    package_triton([zoo_build("mixer-tiny")], tmp_path / "my_repo", kserve=True, storage_uri="gs://bucket/my_repo")
    service = yaml.safe_load((tmp_path / "my_repo" / "inferenceservice.yaml").read_text())
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    assert service["metadata"]["name"] == "my-repo"
    model = service["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2" and model["storageUri"] == "gs://bucket/my_repo"


def test_errors_leave_no_repository(tmp_path, zoo_build, fake_engine):
    built = zoo_build("mixer-tiny")
    repo = tmp_path / "repo"
    with pytest.raises(MlpdeployError, match="two models are named 'mixer-tiny'"):
        package_triton([built, built], repo)
    engine = fake_engine("tensorrt-rtx")
    with pytest.raises(MlpdeployError, match="TensorRT-RTX engine; Triton's tensorrt_plan platform runs datacenter TensorRT engines only"):
        package_triton([built, engine], repo)
    assert not repo.exists() and not list(tmp_path.glob(".repo.*"))


def test_tensorrt_plan(tmp_path, fake_engine):
    engine = fake_engine("tensorrt")
    package_triton([engine], tmp_path / "repo")
    config = _parse(tmp_path / "repo" / "m" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (tmp_path / "repo" / "m" / "1" / "model.plan").read_bytes() == b"serialized engine bytes"
    assert "plugins" in (tmp_path / "repo" / "m" / "config.pbtxt").read_text().split("name:")[0]  # the plugin-library note


def test_implicit_state_config_drives_the_packaged_decoder(tmp_path, zoo_build):
    """Run the packaged model.onnx the way Triton's sequence batcher would under this config: each
    state input starts as `initial_state` (zero past positions, batch dim added) and is then the
    previous step's state output; greedy tokens equal the runtime's generate loop."""
    import numpy as np
    import onnxruntime as ort

    from mlpdeploy.runtime.engine import Engine
    from mlpdeploy.runtime.generate import CachedGenerator

    built = zoo_build("llama-tiny", kv_cache=True)
    package_triton([built], tmp_path / "repo")
    config = _parse(tmp_path / "repo" / "llama-tiny-kv" / "config.pbtxt")
    session = ort.InferenceSession(str(tmp_path / "repo" / "llama-tiny-kv" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    prompt = list(b"def __init__(self")
    states = {s.input_name: np.zeros([1, *s.initial_state[0].dims], np.float32) for s in config.sequence_batching.state}
    ids, tokens, seen = prompt, [], 0
    for _ in range(12):
        feed = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, seen + len(ids)), np.int64),
                "position_ids": np.arange(seen, seen + len(ids), dtype=np.int64)[None], **states}
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))
        states = {s.input_name: outputs[s.output_name] for s in config.sequence_batching.state}
        seen += len(ids)
        ids = [int(outputs["logits"][0, -1].argmax())]
        tokens.append(ids[0])
    assert tokens == CachedGenerator(Engine.load(built)).generate([prompt], 12).tokens[0]


def test_python_backend_repository(tmp_path, zoo_build):
    """--triton-backend python: config.pbtxt (Triton's schema), model.py, and the artifact with what the runtime reads beside it."""
    import sys

    classifier, decoder = zoo_build("mixer-tiny"), zoo_build("llama-tiny", kv_cache=True)
    repo = tmp_path / "repo"
    result = CliRunner().invoke(cli, ["package", str(classifier), str(decoder), "--triton", str(repo), "--triton-backend", "python",
                                      "--max-batch-size", "8", "--max-queue-delay-us", "300", "--kserve"])
    assert result.exit_code == 0, result.output
    manifest = (repo / "inferenceservice.yaml").read_text()
    assert "Triton's stock image has no mlpdeploy" in manifest and yaml.safe_load(manifest)["kind"] == "InferenceService"
    config = _parse(repo / "mixer-tiny" / "config.pbtxt")
    assert config.backend == "python" and not config.platform and config.max_batch_size == 8
    assert config.dynamic_batching.max_queue_delay_microseconds == 300 and not config.model_transaction_policy.decoupled
    assert [(i.name, list(i.dims)) for i in config.input] == [("pixel_values", [3, 32, 32])]
    assert config.parameters["artifact"].string_value == classifier.name
    assert config.parameters["EXECUTION_ENV_PATH"].string_value == sys.prefix
    assert sorted(p.name for p in (repo / "mixer-tiny" / "1").iterdir()) == sorted(
        [classifier.name, "mixer-tiny.ort.manifest.json", "mixer-tiny.ort.session.json", "model.py"])
    assert (repo / "mixer-tiny" / "1" / classifier.name).read_bytes() == classifier.read_bytes()
    model_py = (repo / "mixer-tiny" / "1" / "model.py").read_text()
    assert "class TritonPythonModel" in model_py and "from mlpdeploy.serving.triton_model import MlpdeployModel" in model_py
    compile(model_py, "model.py", "exec")

    config = _parse(repo / "llama-tiny-kv" / "config.pbtxt")
    assert config.backend == "python" and config.max_batch_size == 0 and config.model_transaction_policy.decoupled
    assert not config.HasField("dynamic_batching") and not config.HasField("sequence_batching")
    inputs = {i.name: (i.data_type, list(i.dims), i.optional) for i in config.input}
    assert inputs["input_ids"] == (model_config_pb2.TYPE_INT64, [-1], True)
    assert inputs["text_input"] == (model_config_pb2.TYPE_STRING, [1], True)  # the zoo's byte tokenizer
    assert inputs["stream"] == (model_config_pb2.TYPE_BOOL, [1], True) and inputs["max_tokens"][0] == model_config_pb2.TYPE_INT32
    assert [o.name for o in config.output] == ["output_ids", "text_output", "finish_reason"]
    assert config.parameters["max_batch_size"].string_value == "8"  # the limit on sequences generating at once


def test_python_backend_environment_choice(tmp_path, zoo_build):
    built = zoo_build("mixer-tiny")
    package_triton([built], tmp_path / "none", backend="python", python_env="none")
    assert "EXECUTION_ENV_PATH" not in _parse(tmp_path / "none" / "mixer-tiny" / "config.pbtxt").parameters
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "activate").write_text("")
    package_triton([built], tmp_path / "other", backend="python", python_env=str(env))
    assert _parse(tmp_path / "other" / "mixer-tiny" / "config.pbtxt").parameters["EXECUTION_ENV_PATH"].string_value == str(env)


def test_python_backend_errors_leave_no_repository(tmp_path, zoo_build, fake_engine):
    repo = tmp_path / "repo"
    with pytest.raises(MlpdeployError, match="has no bin/activate, so Triton's Python backend cannot activate it"):
        package_triton([zoo_build("mixer-tiny")], repo, backend="python", python_env=str(tmp_path))
    with pytest.raises(MlpdeployError, match="unknown Triton backend 'onnx'; choose one of native, python"):
        package_triton([zoo_build("mixer-tiny")], repo, backend="onnx")
    engine = fake_engine("tensorrt")
    manifest = json.loads(engine.with_name("m.engine.manifest.json").read_text())
    engine.with_name("m.engine.manifest.json").write_text(json.dumps(manifest | {"cache": find_manifest(zoo_build("llama-tiny", kv_cache=True)).cache}))
    with pytest.raises(MlpdeployError, match="TensorRT engine with a KV cache; the runtime generates through ONNX Runtime"):
        package_triton([zoo_build("mixer-tiny"), engine], repo, backend="python")
    result = CliRunner().invoke(cli, ["package", str(zoo_build("mixer-tiny")), "--triton", str(repo), "--triton-python-env", "none"])
    assert result.exit_code == 2 and "--triton-python-env applies to --triton-backend python only" in result.output
    assert "Traceback" not in result.output
    assert not repo.exists() and not list(tmp_path.glob(".repo.*"))


def test_python_backend_copies_the_tokenizer_files(tmp_path, zoo_build):
    from types import SimpleNamespace

    from mlpdeploy.serving.triton_python import copy_artifact, tokenizer_files_source

    source = tmp_path / "hf"
    source.mkdir()
    (source / "tokenizer.json").write_text("{}")
    artifact = tmp_path / "build" / "m.ort.onnx"
    artifact.parent.mkdir()
    assert tokenizer_files_source(artifact, SimpleNamespace(kind="hf", source=str(source))) == source
    (artifact.parent / "tokenizer_config.json").write_text("{}")  # compile's copy beside the artifact comes first
    assert tokenizer_files_source(artifact, SimpleNamespace(kind="hf", source=str(source))) == artifact.parent
    assert tokenizer_files_source(artifact, SimpleNamespace(kind="zoo", source="llama-tiny")) is None
    version_dir = tmp_path / "repo" / "m" / "1"
    copy_artifact(zoo_build("mixer-tiny"), SimpleNamespace(kind="hf", source=str(source)), version_dir)
    assert (version_dir / "tokenizer.json").read_text() == "{}" and (version_dir / "model.py").is_file()


def test_python_backend_scheduler_parameters_read_from_the_config():
    """A python-backend decoder's config parameters set its scheduler (the prefix cache by `prefix_cache_mb`);
    absent ones keep the defaults, and one that is not an integer is refused in one line."""
    from mlpdeploy.runtime.scheduler.options import DEFAULT_PREFIX_CACHE_MB
    from mlpdeploy.serving.triton_model import scheduler_options

    options = scheduler_options({"max_batch_size": "4", "prefix_cache_mb": "0", "max_cache_tokens": ""})
    assert (options.max_batch, options.prefix_cache_mb, options.max_cache_tokens) == (4, 0, None)
    assert scheduler_options({"max_batch_size": "4"}).prefix_cache_mb == DEFAULT_PREFIX_CACHE_MB
    with pytest.raises(MlpdeployError, match="a scheduler parameter in config.pbtxt is not an integer"):
        scheduler_options({"prefix_cache_mb": "lots"})
