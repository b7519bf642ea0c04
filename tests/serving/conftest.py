"""A server on loopback for the serving tests: a zoo classifier and a cached decoder, built once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def served(zoo_build):
    """(server, {name: built path}) for mixer-tiny and llama-tiny --kv-cache on a free loopback port."""
    pytest.importorskip("uvicorn", reason="needs the serve extra")
    from mlpdeploy.serving.server import Server

    paths = {"mixer-tiny": zoo_build("mixer-tiny"), "llama-tiny-kv": zoo_build("llama-tiny", kv_cache=True)}
    server = Server(list(paths.values()), port=0, max_body_bytes=1 << 20).start()  # a small limit: the oversized case stays cheap
    yield server, paths
    server.stop()


@pytest.fixture
def client(served):
    http = pytest.importorskip("tritonclient.http", reason="needs tritonclient (dev extra)")
    c = http.InferenceServerClient(served[0].url)
    yield c
    c.close()
