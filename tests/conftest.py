"""Shared fixtures: a user-style factory model, exported once per session."""

from __future__ import annotations

from pathlib import Path

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


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite golden snapshots (tests/passes/golden/) with the current results instead of comparing",
    )
