"""Options shared by several commands, declared once as groups (as Polygraphy's argument groups).

A group decorates a command with its options and turns their values back into the library's
own objects: `@BUILD` on a command, then `backend, build_options = BUILD.parse(kwargs)`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mlpdeploy.contract import PAST_TEMPLATE, PRESENT_TEMPLATE
from mlpdeploy.dtypes import PRECISIONS
from mlpdeploy.errors import MlpdeployError
from mlpdeploy.passes.registry import PASSES as PASS_REGISTRY


class OptionGroup:
    """click options that travel together, and `make(**their values)` that builds what they mean."""

    def __init__(self, options: list[click.Option], make: Callable[..., Any]):
        self.options = options
        self.make = make

    def __call__(self, fn):
        params = getattr(fn, "__click_params__", [])
        params.extend(reversed(self.options))  # click reverses the list when it builds the command
        fn.__click_params__ = params
        return fn

    def parse(self, kwargs: dict[str, Any]) -> Any:
        """Take this group's values out of a command's kwargs and build the object they describe."""
        return self.make(**{opt.name: kwargs.pop(opt.name) for opt in self.options})


def precision_option(default: str | None, help: str) -> OptionGroup:
    """--precision (fp32, fp16, bf16); `parse` gives the chosen name."""
    option = click.Option(["--precision"], default=default, show_default=default is not None, type=click.Choice(list(PRECISIONS)), help=help)
    return OptionGroup([option], lambda precision: precision)


def parse_dims(values: tuple[str, ...]) -> dict[str, int]:
    """`("batch=3", "seq=17")` → {"batch": 3, "seq": 17}, or a one-line error. Every command's `--dim`
    goes through here. A size may be 0 (a cached decoder's `past` is 0 at prefill); whether a dim
    may take it is the artifact's exported range, checked where the inputs are made."""
    dims = {}
    for item in values:
        name, eq, value = item.partition("=")
        if not name or not eq or not value.isdigit():
            raise MlpdeployError(f"--dim {item!r} must be NAME=SIZE with a size >= 0, e.g. --dim seq=17 --dim past=0")
        dims[name] = int(value)
    return dims


def dims_option(help: str):
    """`--dim NAME=SIZE` (repeatable), parsed by `parse_dims`: the command gets {name: size}."""
    return click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", callback=lambda _ctx, _param, value: parse_dims(value), help=help)


def _build_group() -> OptionGroup:
    from mlpdeploy.cli.build_options import build_group

    return build_group(OptionGroup)


BUILD = _build_group()  # --backend and each registered backend's options (cli/build_options.py)

TOLERANCES = OptionGroup(
    [
        click.Option(["--atol"], type=float, help="Absolute tolerance, the same for every output (default: per precision, "
                     "scaled by each output's RMS; docs/validation.md)."),
        click.Option(["--rtol"], type=float, help="Relative tolerance (default per precision)."),
    ],
    lambda atol, rtol: {"atol": atol, "rtol": rtol},
)


class MetricDelta(click.ParamType):
    """A quality budget: `0.5` in the metric's own units (perplexity points, accuracy fraction), or
    `1%` relative to the reference's metric. Converts to (value, relative)."""

    name = "DELTA[%]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        relative = text.endswith("%")
        try:
            number = float(text[:-1] if relative else text)
        except ValueError:
            self.fail(f"{value!r} is not a number, or a number followed by % (e.g. 0.5 or 1%)", param, ctx)
        if number < 0:
            self.fail(f"{value!r} must not be negative", param, ctx)
        return (number / 100, True) if relative else (number, False)


METRIC_DELTA = MetricDelta()


def metric_delta(value: tuple[float, bool] | None) -> dict[str, Any]:
    """`--max-metric-delta`'s value as {"max_metric_delta", "relative_metric_delta"}."""
    return {"max_metric_delta": value[0] if value else None, "relative_metric_delta": bool(value and value[1])}


def task_options(default_samples: int) -> OptionGroup:
    """--task-samples (0: the whole eval split) and --max-metric-delta, as {"task_limit", "max_metric_delta", "relative_metric_delta"}."""
    return OptionGroup(
        [
            click.Option(["--task-samples"], type=int, default=default_samples, show_default=True,
                         help="Eval samples for the task metric (0: the whole eval split)."),
            click.Option(["--max-metric-delta"], type=METRIC_DELTA,
                         help="Fail when the task metric degrades by more than this: metric units (perplexity up, accuracy down), "
                              "or a percentage of the reference's metric with % (e.g. 1%)."),
        ],
        lambda task_samples, max_metric_delta: {"task_limit": task_samples or None, **metric_delta(max_metric_delta)},
    )


def _passes(passes: tuple[str, ...], plan: Path | None):
    from mlpdeploy.passes import parse_pass_spec

    return [parse_pass_spec(v) for v in passes], plan


PASSES = OptionGroup(
    [
        click.Option(["--pass", "passes"], multiple=True, metavar="NAME[:key=value,...]",
                     help=f"A rewrite pass (repeatable; run in order, after the plan's): {', '.join(PASS_REGISTRY.names())}. "
                          "`mlpdeploy passes` lists their options."),
        click.Option(["--plan"], type=click.Path(path_type=Path), help="A plan.json from `mlpdeploy analyze`: its passes run first."),
    ],
    _passes,
)

SEED = click.option("--seed", default=0, show_default=True, help="Seed for generated inputs.")

KV_CACHE = click.option(
    "--kv-cache", is_flag=True,
    help="Export a decoder with its key/value cache: one graph for prefill and decode "
         f"({PAST_TEMPLATE.format(layer='{i}', kind='key|value')} → {PRESENT_TEMPLATE.format(layer='{i}', kind='key|value')}).",
)


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise MlpdeployError(f"{option} {text!r} must be numbers separated by commas, one per channel (e.g. 0.485,0.456,0.406)") from None


def _data(data, seq_len, samples, image_size, mean, std):
    from mlpdeploy.model.tasks import DataOptions

    return DataOptions(path=data, seq_len=seq_len, samples=samples, image_size=image_size,
                       mean=_floats(mean, "--mean"), std=_floats(std, "--std"))


DATA = OptionGroup(
    [
        click.Option(["--data"], type=click.Path(path_type=Path), metavar="PATH",
                     help="Your data, which defines the task that judges the model (default: a zoo model's own task): "
                          "text (.txt/.md/.py, .jsonl with a \"text\" field, or a folder of them; the model's tokenizer; "
                          "split by document into calibration and held-out windows), a folder of image class folders, "
                          "or .npz / Polygraphy inputs JSON arrays. See docs/data.md."),
        click.Option(["--seq-len"], type=int, help="Text: tokens per window (default 256 for causal LMs, 128 for encoders, at most the model's positions)."),
        click.Option(["--samples"], type=int, default=64, show_default=True, help="Calibration samples drawn from the data (rows, windows or images)."),
        click.Option(["--image-size"], type=int, help="Images: side in pixels, when the model has no preprocessing config."),
        click.Option(["--mean"], metavar="R,G,B", help="Images: per-channel mean (of 0..1 pixels) when the model has no preprocessing config (default ImageNet's)."),
        click.Option(["--std"], metavar="R,G,B", help="Images: per-channel std when the model has no preprocessing config (default ImageNet's)."),
    ],
    _data,
)

def _speculative(ctx, param, value):
    """Parse the mode before anything else is checked or loaded (eager): a bad mode is the first error."""
    if value is not None:
        from mlpdeploy.runtime.speculative import parse_mode

        parse_mode(value)
    return value


SPECULATIVE = click.option(
    "--speculative", metavar="MODE", is_eager=True, callback=_speculative,
    help="Speculative decoding (default: off): ngram[:n=3,k=8] (prompt lookup), heads[:k=N] (the artifact's draft heads), "
         "self:PLAN (the model minus the layers PLAN's drop-layers removes), draft:ARTIFACT (a smaller --kv-cache artifact "
         "with the same tokenizer). Greedy output is plain decoding's. See docs/decoding.md.",
)
