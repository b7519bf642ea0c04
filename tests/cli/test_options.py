"""The option groups every command shares: one `--dim` parser (the disagreement between `validate`,
which took 0, and `bench`, which refused it, settled: 0 is a size; the artifact's range decides)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mlpdeploy.cli import cli
from mlpdeploy.cli.options import parse_dims
from mlpdeploy.errors import MlpdeployError


def test_parse_dims_takes_zero_and_refuses_the_rest_in_one_line():
    assert parse_dims(("batch=3", "seq=17", "past=0")) == {"batch": 3, "seq": 17, "past": 0}
    for bad in ("seq", "seq=", "=3", "seq=-1", "seq=1.5", "seq=x"):
        with pytest.raises(MlpdeployError, match=rf"^--dim '{bad}' must be NAME=SIZE with a size >= 0, e\.g\. --dim seq=17 --dim past=0$"):
            parse_dims((bad,))


@pytest.mark.parametrize("command", [["bench", "no-such-artifact"], ["validate", "--reference", "no-such-model", "--candidate", "x.onnx"]])
def test_every_command_parses_dim_the_same_way(command):
    """Before the artifact or the model is even looked at: the same parser, the same message."""
    result = CliRunner().invoke(cli, [*command, "--dim", "seq=-1"])
    assert result.exit_code == 2 and "--dim 'seq=-1' must be NAME=SIZE with a size >= 0" in result.output, result.output


def test_a_zero_size_is_judged_by_the_artifacts_range(tiny_export, tiny_spec):
    """batch=0 parses, and is refused by the exported range [1, ...] of the model's batch dim."""
    result = CliRunner().invoke(cli, ["validate", "--reference", tiny_spec, "--candidate", str(tiny_export.model_path), "--dim", "batch=0"])
    assert result.exit_code == 2 and "batch=0 is outside the exported range" in result.output, result.output
