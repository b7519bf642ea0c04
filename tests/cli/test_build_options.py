"""The BUILD option group is derived from the registered backends' typed options: every field with a
command-line option appears on `build` and `compile`, parses into that backend's options class, and an
option the chosen backend does not take is refused in one line."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from mlpdeploy.backends import BACKENDS, BuildOptions
from mlpdeploy.backends.onnxruntime import OrtOptions
from mlpdeploy.backends.options import cli_fields, flags_of
from mlpdeploy.backends.tensorrt import RTXOptions, TensorRTOptions
from mlpdeploy.cli import cli
from mlpdeploy.cli.options import BUILD


def parse(*args: str):
    """What `build` would pass to the backend for these command-line arguments."""
    seen = {}

    @cli.command("probe-build")
    @BUILD
    def probe(**kwargs):
        seen["result"] = BUILD.parse(kwargs)

    try:
        result = CliRunner().invoke(cli, ["probe-build", *args])
    finally:
        cli.commands.pop("probe-build")
    return result, seen.get("result")


def test_every_backend_option_is_on_the_command_line():
    text = CliRunner().invoke(cli, ["build", "--help"], terminal_width=200).output
    for name in BACKENDS.names():
        for field, cli_option in cli_fields(BACKENDS.load(name).Options):
            assert all(flag in text for flag in flags_of(field, cli_option)), (name, field.name)


def test_values_become_the_backends_own_options():
    result, (backend, options) = parse("--device", "cpu", "--opt-level", "basic", "--no-decoder-fusions", "--ort-kernels", "--no-cache")
    assert result.exit_code == 0 and backend == "onnxruntime"
    assert options == OrtOptions(device="cpu", opt_level="basic", fusions=False, kernels=True, cache=False)
    result, (backend, options) = parse("--backend", "tensorrt-rtx", "--target", "sm89", "--shapes", "seq=1:8:64", "--precision", "fp16")
    assert result.exit_code == 0 and options == RTXOptions(target="sm89", shapes={"seq": ([1], [8], [64])}, precision="fp16")
    result, (backend, options) = parse("--backend", "tensorrt", "--plugin-library", "a.so", "--plugin-library", "b.so")
    assert type(options) is TensorRTOptions and [str(p) for p in options.plugin_libraries] == ["a.so", "b.so"]
    assert not any(f.name in ("extra", "ort_kernels", "ort_fusions") for f in dataclasses.fields(BuildOptions))


@pytest.mark.parametrize("args, message", [
    (("--backend", "tensorrt-rtx", "--opt-level", "basic"),
     "--opt-level is an option of backend onnxruntime, not tensorrt-rtx; --backend tensorrt-rtx takes --target, --shapes, --precision, "
     "--cache-dir, --no-cache"),
    (("--ort-kernels", "--plugin-library", "x.so"), "--plugin-library is an option of backend tensorrt, not onnxruntime;"),
    (("--backend", "tensorrt", "--device", "cuda", "--no-ort-fusions"), "--device, --no-ort-fusions are options of backend onnxruntime, not tensorrt;"),
    (("--backend", "nope"), "unknown backend 'nope'; available backends: onnxruntime, tensorrt, tensorrt-rtx"),
])
def test_an_option_of_another_backend_is_refused(tmp_path, args, message):
    result = CliRunner().invoke(cli, ["build", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "out" / "m.x"), *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
