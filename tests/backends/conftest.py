"""Shared by the TensorRT backend tests: zoo exports and rewrites, made once per test session and worker."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def zoo_export(tmp_path_factory):
    """`zoo_export(name)` -> (bundle, ExportResult), exported on first use."""
    from mlpdeploy.errors import MlpdeployError
    from mlpdeploy.export.torch_export import export_model
    from mlpdeploy.model.source import load_model

    root = tmp_path_factory.mktemp("zoo")
    done = {}

    def get(name: str):
        if name not in done:
            try:
                bundle = load_model(name)
            except MlpdeployError as exc:  # a trained zoo model whose checkpoint is not built yet
                if "checkpoint" not in str(exc):
                    raise
                pytest.skip(str(exc))
            done[name] = (bundle, export_model(bundle, root / f"{name}.onnx"))
        return done[name]

    return get


@pytest.fixture(scope="session")
def zoo_rewrite(zoo_export, tmp_path_factory):
    """`zoo_rewrite(name, pass_name)` -> the rewritten model's path (the export itself for pass None)."""
    from mlpdeploy.passes.pipeline import PassSpec
    from mlpdeploy.passes.rewrite import rewrite_model

    root = tmp_path_factory.mktemp("rewritten")
    done = {}

    def get(name: str, pass_name: str | None):
        _, exported = zoo_export(name)
        if pass_name is None:
            return exported.model_path
        if (name, pass_name) not in done:
            done[name, pass_name] = rewrite_model(exported.model_path, root / f"{name}.{pass_name}.onnx", [PassSpec(pass_name)]).model_path
        return done[name, pass_name]

    return get
