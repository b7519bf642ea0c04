"""`polygraphy run ARTIFACT --mlpdeploy`: an extension module for Polygraphy's `run` tool.

Polygraphy's `run` loads every entry point of group `polygraphy.run.plugins` (pyproject.toml names
`export_argument_groups` here) and adds the argument groups it returns; a runner group adds a
`--<opt>` flag that selects its runner. `--mlpdeploy` runs ARTIFACT as mlpdeploy runs it: through
the runner of the backend its manifest names (`mlpdeploy.backends.artifact_runner`), so an
`--ort-kernels` build registers its compiled kernels library and an engine runs in its TensorRT
runtime (or, where it cannot run, the graph it was parsed from, with a warning saying so). Beside
`--onnxrt` (stock ONNX Runtime on the same file) that compares the two with Polygraphy's comparator:

    polygraphy run out/model.ort.onnx --mlpdeploy --onnxrt --save-inputs in.json --save-outputs out.json

and `mlpdeploy validate --reference MODEL --candidate out/model.ort.onnx --inputs in.json
--candidate-outputs out.json` judges the recorded outputs against the torch model.
"""

from __future__ import annotations

from polygraphy.tools.args import ModelArgs
from polygraphy.tools.args.base import BaseRunnerArgs
from polygraphy.tools.script import make_invocable


class MlpdeployRunnerArgs(BaseRunnerArgs):
    """
    mlpdeploy Runner: running an artifact mlpdeploy built, through its backend's runner

    Depends on:

        - ModelArgs
    """

    def get_name_opt_impl(self):
        return "mlpdeploy (the artifact's own backend: its session settings, kernels library or engine runtime)", "mlpdeploy"

    def add_to_script_impl(self, script):
        script.add_import(imports=["artifact_runner"], frm="mlpdeploy.backends")
        script.add_runner(make_invocable("artifact_runner", self.arg_groups[ModelArgs].path))


def export_argument_groups():
    """The entry point `polygraphy run` calls: the argument groups this extension adds."""
    return [MlpdeployRunnerArgs()]
