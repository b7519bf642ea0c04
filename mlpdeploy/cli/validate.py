"""`mlpdeploy validate`."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape

from mlpdeploy.cli.app import cli, console, debug_option
from mlpdeploy.cli.options import DATA, SEED, TOLERANCES, dims_option, precision_option, task_options
from mlpdeploy.cli.tables import failure, print_bisect, print_validation
from mlpdeploy.errors import MlpdeployError

TASK = task_options(default_samples=0)
PRECISION = precision_option(None, "Picks default tolerances (default: the precision the candidate was built with, else fp32).")


@cli.command()
@click.option("--reference", required=True, help="MODEL (torch) or an .onnx file.")
@click.option("--candidate", required=True, type=click.Path(path_type=Path),
              help="What to check: an .onnx model, or an artifact `mlpdeploy build` made (e.g. an .engine).")
@click.option("--inputs", type=click.Path(path_type=Path), help="Polygraphy inputs JSON or .npz; default: the task's held-out samples (zoo models, --data), else generated from the manifest.")
@click.option("--candidate-outputs", type=click.Path(path_type=Path), metavar="RESULTS.json",
              help="The candidate's outputs as `polygraphy run CANDIDATE --mlpdeploy ... --save-inputs IN.json --save-outputs "
                   "RESULTS.json` recorded them (not run here); needs --inputs IN.json.")
@click.option("--candidate-runner", metavar="NAME", help="Whose outputs in --candidate-outputs are the candidate's (default: the --mlpdeploy runner's).")
@PRECISION
@TOLERANCES
@SEED
@dims_option("Size of a dynamic dim of the validation inputs, e.g. --dim seq=17 (a cached decoder: --dim past=N prefill tokens, seq = decode tokens).")
@click.option("--layers", is_flag=True, help="Also compare every layer's output (torch reference; candidate must carry module scopes).")
@click.option("--task", is_flag=True, help="Also compute the task metric (perplexity / accuracy) on both sides (zoo models with a task; implied by --data).")
@DATA
@TASK
@click.option("--bisect", is_flag=True, help="Report the first layer (by module scope, in graph order) whose output is over tolerance.")
@click.option("--reduce", "reduce_path", type=click.Path(path_type=Path), metavar="OUT.onnx",
              help="Write the smallest module scope over tolerance as OUT.onnx, its inputs as OUT.inputs.json and torch's "
                   "output as OUT.reference.json (Polygraphy formats: polygraphy run OUT.onnx --onnxrt --load-inputs ... --load-outputs ...).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the report as JSON here.")
@debug_option
def validate(reference: str, candidate: Path, inputs, candidate_outputs, candidate_runner, seed, dims, layers, task, bisect, reduce_path, json_path, debug,
             **kwargs) -> None:
    """Compare a candidate with the reference; exit 1 when over tolerance."""
    from mlpdeploy.atomic import write_json
    from mlpdeploy.backends import load_candidate
    from mlpdeploy.model import load_model
    from mlpdeploy.model.tasks import attach_task
    from mlpdeploy.validate import ValidateOptions
    from mlpdeploy.validate import validate as run_validation

    data = DATA.parse(kwargs)
    if data.path is not None and reference.endswith(".onnx"):
        raise MlpdeployError("--data defines a task on the torch model: give a MODEL as --reference, not an .onnx file")
    loaded = load_candidate(candidate)
    precision = PRECISION.parse(kwargs)
    if precision is None:
        precision = (loaded.manifest.last("build").get("precision") if loaded.manifest else None) or "fp32"
    options = ValidateOptions(inputs=inputs, precision=precision, seed=seed, dims=dims, layers=layers, task=task or data.path is not None, bisect=bisect, reduce=reduce_path,
                              **TOLERANCES.parse(kwargs), **TASK.parse(kwargs))
    if candidate_outputs is not None:
        loaded = _recorded(loaded, candidate_outputs, candidate_runner, inputs, options)
    elif candidate_runner is not None:
        raise MlpdeployError("--candidate-runner picks a runner in --candidate-outputs; give that file too")
    ref = Path(reference) if reference.endswith(".onnx") else attach_task(load_model(reference), data)
    with console.status("validating"):
        report = run_validation(ref, loaded, options)
    print_validation(console, report.to_json(), f"{report.candidate} vs {report.reference}")
    if report.bisect is not None:
        print_bisect(console, report.bisect)
    if json_path:
        write_json(json_path, report.to_json())
    console.print("[green]PASS[/]" if report.passed else f"[red]FAIL: {escape(failure(report.to_json()))}[/]")
    sys.exit(0 if report.passed else 1)


def _recorded(loaded, results: Path, runner: str | None, inputs: Path | None, options):
    """The candidate with its outputs read from a `polygraphy run --save-outputs` file, checked against the inputs it ran."""
    from mlpdeploy.model.inputs import load_inputs
    from mlpdeploy.validate.runners import recorded_candidate

    if inputs is None:
        raise MlpdeployError("--candidate-outputs needs the inputs those outputs were computed from: --inputs IN.json "
                             "(polygraphy run ... --save-inputs IN.json)")
    if options.task or options.max_metric_delta is not None:
        raise MlpdeployError("recorded outputs answer only the recorded inputs: drop --task/--data/--max-metric-delta with --candidate-outputs")
    replay, iterations = recorded_candidate(loaded, results, runner)
    feeds = len(load_inputs(inputs))
    if feeds != iterations:
        raise MlpdeployError(f"{inputs} holds {feeds} feed(s) but {results} holds {iterations} recorded iteration(s); "
                             "save both from one polygraphy run")
    return replay
