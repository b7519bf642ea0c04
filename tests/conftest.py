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


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite golden snapshots (tests/passes/golden/) with the current results instead of comparing",
    )
