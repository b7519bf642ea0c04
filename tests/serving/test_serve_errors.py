"""`serve` / `package` user errors: one line naming the problem and the fix, nothing left behind."""

from __future__ import annotations

import socket
import sys

import pytest
from click.testing import CliRunner

from mlpdeploy.cli import cli
from mlpdeploy.errors import MlpdeployError


def test_serve_missing_artifact(tmp_path):
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist; build one with `mlpdeploy build` or `mlpdeploy compile`" in result.output


@pytest.mark.parametrize("args, message", [(["--prefill-stall", "0"], "the prefill stall (--prefill-stall) must be positive, got 0.0"),
                                           (["--prefill-min-chunk", "0"], "prefill chunks (--prefill-min-chunk) take at least 1 token, got 0")])
def test_serve_refuses_bad_prefill_chunking(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "nothing"), *args])
    assert result.exit_code == 2 and message in result.output


def test_serve_port_in_use(zoo_build):
    from mlpdeploy.serving.server import Server

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(MlpdeployError, match=r"cannot listen on 127.0.0.1:\d+: .*choose another --port"):
            Server([zoo_build("mixer-tiny")], port=busy.getsockname()[1])
    finally:
        busy.close()


def test_serve_fused_prefill_needs_a_ragged_build(zoo_build):
    """`serve --prefill fused` on a decoder built without --ort-kernels: a one-line error before listening."""
    from mlpdeploy.runtime.scheduler import SchedulerOptions
    from mlpdeploy.serving.server import Server

    with pytest.raises(MlpdeployError, match=r"llama-tiny-kv\.ort\.onnx takes no ragged steps, which fused prefill needs; rebuild it "
                                              r"with --ort-kernels \(CachedAttention\) or use --prefill separate"):
        Server([zoo_build("llama-tiny", kv_cache=True)], port=0, batching=SchedulerOptions(prefill="fused"))


def test_serve_two_models_with_one_name(zoo_build, tmp_path):
    from mlpdeploy.serving.models import load_models

    with pytest.raises(MlpdeployError, match="two models are named 'mixer-tiny'"):
        load_models([zoo_build("mixer-tiny"), zoo_build("mixer-tiny")])


@pytest.mark.parametrize("module", ["uvicorn", "starlette", "prometheus_client"])
def test_missing_serve_extra_is_one_line(zoo_build, monkeypatch, module):
    from mlpdeploy.serving.server import Server

    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    for name in [m for m in sys.modules if m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MlpdeployError, match=rf"{module} is not installed .*pip install 'mlpdeploy\[serve\]'"):
        Server([zoo_build("mixer-tiny")], port=0)


def test_package_cli_errors(tmp_path, zoo_build):
    built = str(zoo_build("mixer-tiny"))
    result = CliRunner().invoke(cli, ["package", built, built, "--triton", str(tmp_path / "repo")])
    assert result.exit_code == 2 and "two models are named 'mixer-tiny'" in result.output
    assert not (tmp_path / "repo").exists()
    result = CliRunner().invoke(cli, ["package", built])
    assert result.exit_code == 2 and "--triton" in result.output


def test_serve_option_defaults_are_the_schedulers():
    """`serve` states its scheduler defaults as literals (importing the scheduler would slow every CLI
    start by ~1.5 s); they must stay those of SchedulerOptions."""
    from mlpdeploy.runtime.scheduler import SchedulerOptions

    defaults = {p.name: p.default for p in cli.commands["serve"].params}
    options = SchedulerOptions()
    assert (defaults["max_batch_size"], defaults["max_queue_delay_us"], defaults["max_queue_size"], defaults["prefill_stall"],
            defaults["prefill_min_chunk"], defaults["prefix_cache_mb"], defaults["prefill"]) == (
        options.max_batch, options.max_queue_delay_us, options.max_queue_size, options.prefill_stall, options.smallest_chunk,
        options.prefix_cache_mb, options.prefill)
