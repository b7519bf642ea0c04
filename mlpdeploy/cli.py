"""The `mlpdeploy` command line: a thin layer over the library (every command is one API call)."""

from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import MlpdeployError

console = Console()
err_console = Console(stderr=True)


def _debug_requested() -> bool:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("debug"):
            return True
        ctx = ctx.parent
    return False


def handles_errors(fn):
    """One-line errors (exit 2, numerics exit 1); a traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MlpdeployError as exc:
            if _debug_requested():
                traceback.print_exc()
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except (KeyboardInterrupt, click.exceptions.Exit, click.ClickException):
            raise
        except Exception as exc:  # a bug or an unexpected library failure
            if _debug_requested():
                traceback.print_exc()
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            err_console.print(
                f"[bold red]error:[/] {type(exc).__name__}: {escape(msg)} (rerun with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(2)

    return wrapper


debug_option = click.option("--debug", is_flag=True, help="Show tracebacks and the exporter's own log.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@debug_option
@click.version_option(package_name="mlpdeploy")
def cli(debug: bool) -> None:
    """mlpdeploy: compile PyTorch MLP-heavy models to optimized ONNX / engines, with numerics proof.

    MODEL is a zoo name (see `mlpdeploy zoo`), path/to/file.py:factory, a Hugging Face
    model directory (config.json + weights), or a torch.export .pt2 file.
    """


def _parse_dims(values: tuple[str, ...]) -> dict[str, int]:
    dims = {}
    for item in values:
        name, eq, value = item.partition("=")
        if not eq or not value.isdigit():
            raise MlpdeployError(f"--dim {item!r} must be NAME=INT, e.g. --dim batch=3 --dim seq=17")
        dims[name] = int(value)
    return dims


def _parse_passes(values: tuple[str, ...]):
    from .passes.pipeline import parse_pass_spec

    return [parse_pass_spec(v) for v in values]


def _build_options(device, opt_level, precision, target, shapes=(), cache_dir=None, no_cache=False):
    from .backends import BuildOptions
    from .backends.trt_shapes import parse_shapes

    extra = {}
    if cache_dir is not None:
        extra["cache_dir"] = cache_dir
    if no_cache:
        extra["cache"] = False
    return BuildOptions(device=device, opt_level=opt_level, precision=precision, target=target, shapes=parse_shapes(shapes), extra=extra)


def engine_options(fn):
    """Options shared by `build` and `compile` that only TensorRT backends read."""
    for option in reversed(
        [
            click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "bf16"]),
                         help="Engine precision (TensorRT backends; also picks validation tolerances)."),
            click.option("--target", default=None, help="TensorRT-RTX target GPU: sm75, sm80, sm86, sm89, sm120, sm121 (default: portable)."),
            click.option("--shapes", multiple=True, metavar="NAME=MIN:OPT:MAX",
                         help="TensorRT optimization profile for an input (input_ids=1x1:2x16:8x512) or a dim (seq=1:64:1024)."),
            click.option("--cache-dir", type=click.Path(path_type=Path), help="TensorRT engine/timing cache (default $MLPDEPLOY_CACHE_DIR or ~/.cache/mlpdeploy)."),
            click.option("--no-cache", is_flag=True, help="Do not read or write the TensorRT cache."),
        ]
    ):
        fn = option(fn)
    return fn


def _validation_table(outputs: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("output", "max abs", "max rel", "mean abs", "cosine", "verdict"):
        table.add_column(col, justify="left" if col in ("output", "verdict") else "right")
    for name, o in outputs.items():
        o = o if isinstance(o, dict) else o.to_json()
        table.add_row(
            name,
            f"{o['max_abs']:.3e}",
            f"{o['max_rel']:.3e}",
            f"{o['mean_abs']:.3e}",
            f"{o['cosine']:.8f}",
            "[green]PASS[/]" if o["passed"] else "[red]FAIL[/]",
        )
    return table


def _task_table(task: dict) -> Table:
    table = Table(title=f"task {task['task']} ({task['samples']} eval samples)")
    for col in ("metric", "reference", "candidate", "delta", "top-1 agreement", "verdict"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    verdict = "-" if "passed" not in task else ("[green]PASS[/]" if task["passed"] else "[red]FAIL[/]")
    table.add_row(
        task["metric"], f"{task['reference']:.4f}", f"{task['candidate']:.4f}",
        f"{task['delta']:+.4g} ({task['relative_delta']:+.3%})", f"{task['agreement']:.4%}", verdict,
    )
    return table


def _layer_table(layers: dict, worst: int = 8) -> Table:
    """The layers with the largest errors (all of them when there are few)."""
    table = Table(title=f"per layer (worst {worst}, in {layers['model']})")
    for col in ("layer", "max abs", "mean abs", "cosine"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    ranked = sorted(layers["errors"].items(), key=lambda kv: -kv[1]["max_abs"])[:worst]
    for name, e in ranked:
        table.add_row(name, f"{e['max_abs']:.3e}", f"{e['mean_abs']:.3e}", f"{e['cosine']:.8f}")
    return table


@cli.command()
@debug_option
@handles_errors
def zoo(debug: bool) -> None:
    """List the built-in models: parameters, task and, for trained ones, their measured metric."""
    from .zoo import ZOO

    table = Table(title="mlpdeploy zoo (metric on the task's eval split; baseline in brackets)")
    for col in ("name", "params", "task", "metric", "description"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for name, entry in ZOO.items():
        bundle = entry.build()
        table.add_row(name, f"{bundle.num_parameters:,}", bundle.task.name if bundle.task else "-", _metric_text(bundle.metadata.get("metrics")), entry.description)
    console.print(table)


def _metric_text(metrics: dict | None) -> str:
    if not metrics:
        return "untrained"
    fmt = "{:.1%}" if metrics["metric"] == "accuracy" else "{:.3f}"
    text = f"{metrics['metric']} {fmt.format(metrics['value'])}"
    if metrics.get("baseline"):
        text += f" ({fmt.format(metrics['baseline']['value'])})"
    return text


@cli.command()
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the .onnx file (a .manifest.json goes beside it).")
@click.option("--opset", default=20, show_default=True, help="ONNX opset to export with.")
@debug_option
@handles_errors
def export(model: str, output: Path, opset: int, debug: bool) -> None:
    """Export MODEL to ONNX with dynamic dims and module scopes on nodes."""
    from .export import export_model
    from .source import load_model

    with console.status(f"exporting {model}"):
        result = export_model(load_model(model), output, opset=opset, debug=debug)
    console.print(f"wrote {result.model_path} and {result.manifest_path} in {result.seconds:.1f} s", markup=False)


@cli.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the rewritten .onnx file.")
@click.option("--pass", "passes", multiple=True, metavar="NAME[:key=value,...]", help="A pass to run (repeatable; in order).")
@debug_option
@handles_errors
def rewrite(onnx_model: Path, output: Path, passes: tuple[str, ...], debug: bool) -> None:
    """Run rewrite passes on an ONNX model."""
    from .rewrite import rewrite_model

    result = rewrite_model(onnx_model, output, _parse_passes(passes))
    for spec, report in result.passes.items():
        console.print(f"{spec}: rewrote {report['rewritten']} site(s)", markup=False)
        for site, reason in report.get("skipped", {}).items():
            console.print(f"  skipped {site}: {reason}", markup=False)
    console.print(f"wrote {output} in {result.seconds:.2f} s", markup=False)


@cli.command()
def passes() -> None:
    """List the registered rewrite passes and their options."""
    from .passes.pipeline import available_passes, pass_class

    table = Table(title="rewrite passes")
    for col in ("name", "options", "description"):
        table.add_column(col)
    for name in available_passes():
        cls = pass_class(name)
        table.add_row(name, ", ".join(f"{k}={v}" for k, v in cls.options.items()) or "-", cls.description)
    console.print(table)


@cli.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("--backend", default="onnxruntime", show_default=True, help="Build backend.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Where to write the built artifact.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]), help="onnxruntime: execution provider.")
@click.option("--opt-level", default="extended", show_default=True, type=click.Choice(["disabled", "basic", "extended", "all"]), help="onnxruntime: graph optimization level.")
@engine_options
@debug_option
@handles_errors
def build(onnx_model: Path, backend: str, output: Path, device: str, opt_level: str, precision, target, shapes, cache_dir, no_cache, debug: bool) -> None:
    """Build ONNX_MODEL into a deployable artifact with a backend."""
    from .backends import get_backend

    impl = get_backend(backend)
    with console.status(f"building with {backend}"):
        result = impl.build(onnx_model, output, _build_options(device, opt_level, precision, target, shapes, cache_dir, no_cache))
    for name, path in result.artifacts.items():
        console.print(f"{name}: {path}", markup=False)
    console.print(f"built in {result.info.get('seconds', 0):.2f} s")


@cli.command()
@click.option("--reference", required=True, help="MODEL (torch) or an .onnx file.")
@click.option("--candidate", required=True, type=click.Path(path_type=Path), help="The .onnx model to check.")
@click.option("--inputs", type=click.Path(path_type=Path), help="Polygraphy inputs JSON or .npz; default: generated from the manifest.")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16", "bf16"]), help="Picks default tolerances.")
@click.option("--atol", type=float, help="Absolute tolerance (default per precision).")
@click.option("--rtol", type=float, help="Relative tolerance (default per precision).")
@click.option("--seed", default=0, show_default=True, help="Seed for generated inputs.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=INT", help="Size of a dynamic dim for generated inputs, e.g. --dim seq=17.")
@click.option("--layers", is_flag=True, help="Also compare every layer's output (torch reference; candidate must carry module scopes).")
@click.option("--task", is_flag=True, help="Also compute the task metric (perplexity / accuracy) on both sides (zoo models with a task).")
@click.option("--task-samples", type=int, default=0, show_default=True, help="Eval samples for the task metric (0: the whole eval split).")
@click.option("--max-metric-delta", type=float, help="Fail when the task metric degrades by more than this (metric units; implies --task).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the report as JSON here.")
@debug_option
@handles_errors
def validate(reference: str, candidate: Path, inputs, precision, atol, rtol, seed, dims, layers, task, task_samples, max_metric_delta, json_path, debug) -> None:
    """Compare a candidate ONNX model with the reference; exit 1 when over tolerance."""
    from .atomic import write_json
    from .source import load_model
    from .validate import validate as run_validation

    ref = Path(reference) if reference.endswith(".onnx") else load_model(reference)
    with console.status("validating"):
        report = run_validation(
            ref, candidate, inputs=inputs, precision=precision, atol=atol, rtol=rtol, seed=seed, dims=_parse_dims(dims),
            layers=layers, task=task, task_limit=task_samples or None, max_metric_delta=max_metric_delta,
        )
    console.print(_validation_table(report.outputs, f"{report.candidate} vs {report.reference} (atol {report.atol:g}, rtol {report.rtol:g})"))
    if report.layers is not None:
        console.print(_layer_table(report.layers))
    if report.task is not None:
        console.print(_task_table(report.task))
    if json_path:
        write_json(json_path, report.to_json())
    console.print("[green]PASS[/]" if report.passed else "[red]FAIL: outputs drifted past tolerance[/]")
    sys.exit(0 if report.passed else 1)


@cli.command(name="compile")
@click.argument("model")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--pass", "passes", multiple=True, metavar="NAME[:key=value,...]", help="A rewrite pass (repeatable; in order).")
@click.option("--backend", default="onnxruntime", show_default=True, help="Build backend.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--opt-level", default="extended", show_default=True, type=click.Choice(["disabled", "basic", "extended", "all"]))
@engine_options
@click.option("--atol", type=float, help="Absolute tolerance (default per precision).")
@click.option("--rtol", type=float, help="Relative tolerance (default per precision).")
@click.option("--opset", default=20, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--task-samples", type=int, default=128, show_default=True, help="Eval samples for the task metric (0: the whole eval split).")
@click.option("--max-metric-delta", type=float, help="Fail when the task metric degrades by more than this (metric units).")
@debug_option
@handles_errors
def compile_cmd(model, output, passes, backend, device, opt_level, precision, target, shapes, cache_dir, no_cache, atol, rtol, opset, seed, task_samples, max_metric_delta, debug) -> None:
    """Export, rewrite, build and validate MODEL; write artifacts and report.json/html to OUTPUT."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from .compile import CompileOptions, compile_model

    options = CompileOptions(
        passes=_parse_passes(passes),
        backend=backend,
        build=_build_options(device, opt_level, precision, target, shapes, cache_dir, no_cache),
        atol=atol,
        rtol=rtol,
        opset=opset,
        seed=seed,
        task_limit=task_samples or None,
        max_metric_delta=max_metric_delta,
        debug=debug,
    )
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=False) as progress:
        tasks = {}

        def on_stage(stage: str, event: str, seconds: float | None) -> None:
            if event == "start":
                tasks[stage] = progress.add_task(f"{stage} …", total=1)
            else:
                progress.update(tasks[stage], completed=1, description=f"{stage} [dim]({seconds:.2f} s)[/]")

        report = compile_model(model, output, options, on_stage=on_stage)
    val = report["validation"]
    if val.get("layers", {}).get("errors"):
        console.print(_layer_table(val["layers"]))
    console.print(_validation_table(val["outputs"], f"{report['model']}: validation (atol {val['atol']:g}, rtol {val['rtol']:g})"))
    if val.get("task"):
        console.print(_task_table(val["task"]))
    if val.get("note"):
        console.print(f"note: {val['note']}", markup=False)
    console.print(f"report: {report['artifacts']['report_json']} and {report['artifacts']['report_html']}", markup=False)
    console.print("[green]PASS[/]" if report["passed"] else "[red]FAIL: outputs drifted past tolerance[/]")
    sys.exit(0 if report["passed"] else 1)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
