"""Fixtures of the runtime tests."""

from __future__ import annotations

import pytest

from mlpdeploy.runtime.engine import Engine


@pytest.fixture(scope="session")
def small_int4_kernels(zoo_export, tmp_path_factory):
    """llama-small int4 (block 32, accuracy level 4) built with --ort-kernels: its linears run MatMulInt4."""
    from mlpdeploy.backends import get_backend
    from mlpdeploy.backends.onnxruntime import OrtOptions
    from mlpdeploy.passes import rewrite_model
    from mlpdeploy.passes.pipeline import PassSpec

    _, exported = zoo_export("llama-small", True)
    out = tmp_path_factory.mktemp("int4-kernels")
    rewritten = rewrite_model(exported, out / "model.opt.onnx", [PassSpec("quantize-weights", {"format": "int4"})]).model_path
    result = get_backend("onnxruntime").build(rewritten, out / "model.ort.onnx", OrtOptions(device="cpu", kernels=True))
    assert result.info["ort_kernels"]["nodes"]["MatMulInt4"] > 0
    return Engine.load(out / "model.ort.onnx")
