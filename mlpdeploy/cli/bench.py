"""`mlpdeploy bench`: measure a built artifact (or a model compiled on the spot) on this machine."""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path

import click
from rich.table import Table

from mlpdeploy.cli.app import cli, console, debug_option
from mlpdeploy.cli.options import DATA, SPECULATIVE, dims_option
from mlpdeploy.errors import MlpdeployError


@cli.command()
@click.argument("target")
@click.option("--decode", is_flag=True, help="Time prefill and per-token decode of a --kv-cache artifact (a MODEL is compiled with --kv-cache).")
@click.option("--batch", "batches", multiple=True, type=int, default=(1,), show_default=True,
              help="Size of the `batch` dim; repeatable (one row each).")
@dims_option("Size of another dynamic dim (e.g. seq=128); repeatable.")
@click.option("--warmup", default=5, show_default=True, help="Untimed runs before timing (latency mode).")
@click.option("--iterations", default=50, show_default=True, help="Timed runs at least (latency mode) ...")
@click.option("--min-seconds", default=1.0, show_default=True, help="... and at least this long (latency mode).")
@click.option("--context", "contexts", multiple=True, type=int, default=(16, 128, 512), show_default=True,
              help="Prompt length(s) before decoding (--decode); repeatable.")
@click.option("--new-tokens", type=int, help="Tokens decoded per run (--decode; default 32, with --prompts 96).")
@click.option("--repeats", type=int, help="Timed runs per context (default 3) or prompt (default 1) after one warm-up (--decode).")
@click.option("--prompts", "prompts_path", type=click.Path(path_type=Path), metavar="FILE.jsonl",
              help="--decode on real prompts (one {\"prompt\": ...} a line) instead of random contexts: per prompt output ids, "
                   "prefill/decode ms, tokens/s with prefill, acceptance with --speculative; and the whole set.")
@click.option("--chat/--no-chat", default=None, help="--prompts: wrap each in the chat template (default: on when the model has one).")
@click.option("--system", help="--prompts: a system message before each prompt (chat template only).")
@SPECULATIVE
@click.option("--check-plain", is_flag=True, help="--prompts --speculative: also decode each prompt plainly and report where the outputs differ.")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: the build's setting).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the results as JSON here.")
@DATA
@debug_option
def bench(target, decode, batches, dims, warmup, iterations, min_seconds, contexts, new_tokens, repeats, prompts_path, chat, system,
          speculative, check_plain, threads, json_path, debug, **kwargs) -> None:
    """Time TARGET: a built artifact (a `compile` directory or its .onnx), or a MODEL spec, which is
    first compiled with the defaults (ONNX Runtime) into a temporary directory.

    Latency mode (default): p50/p90/p99 ms per run and samples/s for each --batch, with random
    inputs at the given dim sizes. --decode: prefill ms and decode ms/token p50/p90 per context;
    with --prompts FILE.jsonl, each prompt generated (greedy, stop tokens honoured) with
    tokens/s including prefill, and the set's total. Both report the model's bytes on disk and
    this process's peak memory.

    With --data, inputs come from the data's held-out split (the task `--data` defines for the
    model, or for an artifact the model its manifest names): latency feeds are its first samples,
    decode prompts windows of its text; a MODEL is compiled and validated on it.
    """
    from mlpdeploy.atomic import write_json
    from mlpdeploy.runtime.engine import Engine
    from mlpdeploy.runtime.latency import model_bytes, peak_rss_bytes

    data = DATA.parse(kwargs)
    if data.path is not None and dims:
        raise MlpdeployError("--dim and --data: the data sets the input shapes (text windows: --seq-len); drop --dim")
    if (prompts_path or speculative or chat is not None or system or check_plain) and not decode:
        raise MlpdeployError("--prompts, --speculative, --chat, --system and --check-plain time generation: add --decode")
    if speculative and not prompts_path:
        raise MlpdeployError("--speculative is timed on real prompts (drafts depend on the text): add --prompts FILE.jsonl")
    if prompts_path and data.path is not None:
        raise MlpdeployError("--prompts and --data both give the decode prompts; choose one")
    extra = {}
    with tempfile.TemporaryDirectory(prefix="mlpdeploy-bench-") as scratch:
        is_artifact = Path(target).exists() and not _is_model_dir(Path(target))
        artifact = Path(target) if is_artifact else _compile_for_bench(target, Path(scratch) / "build", decode, data)
        entries = None
        if speculative:  # a drafter model's session and this one step in turn: neither spins between its runs
            from mlpdeploy.runtime.speculative import parse_mode, session_entries

            entries = session_entries(parse_mode(speculative))
        engine = Engine.load(artifact, threads=threads, session_entries=entries)
        task = _task(target if not is_artifact else engine.manifest.source, data) if data.path is not None else None
        if decode and prompts_path:
            from mlpdeploy.cli.bench_prompts import bench_prompt_set

            mode = "decode-prompts"
            rows, extra = bench_prompt_set(engine, prompts_path, new_tokens or 96, repeats or 1, chat, system, speculative, check_plain, threads)
        elif decode:
            mode, rows = "decode", _bench_decode(engine, contexts, new_tokens or 32, batches[0], repeats or 3, task)
        else:
            mode, rows = "latency", _bench_latency(engine, batches, dims, warmup, iterations, min_seconds, task)
        size, peak = model_bytes(engine.path), peak_rss_bytes()
    console.print(f"model bytes: {size / 2**20:.2f} MiB   peak memory (this process): {peak / 2**20:.0f} MiB", markup=False)
    if json_path:
        threads_used = engine.session.get_session_options().intra_op_num_threads if engine.session is not None else None
        write_json(json_path, {
            "target": target, "artifact": str(engine.path), "mode": mode, "machine": platform.processor() or platform.machine(),
            "runtime": engine.runtime, "intra_op_num_threads": threads_used, "model_bytes": size, "peak_rss_bytes": peak,
            "inputs": "prompts" if prompts_path else task.calibration_source().replace("data:", "held-out data:", 1) if task is not None else "random",
            "results": [r.to_json() for r in rows], **extra,
        })


def _is_model_dir(path: Path) -> bool:
    """A Hugging Face model directory (a MODEL), not a compiled artifact directory."""
    return path.is_dir() and (path / "config.json").is_file() and not (path / "report.json").is_file()


def _task(model: str, data):
    """The task `--data` defines for `model` (a MODEL spec, or the source an artifact's manifest names)."""
    from mlpdeploy.model import load_model
    from mlpdeploy.model.tasks import resolve_task

    with console.status(f"reading --data {data.path} for {model}"):
        return resolve_task(load_model(model), data)


def _compile_for_bench(model: str, out: Path, decode: bool, data=None) -> Path:
    from mlpdeploy.compile import CompileOptions, compile_model

    with console.status(f"compiling {model} (no artifact at that path)") as status:
        report = compile_model(model, out, CompileOptions(kv_cache=decode, data=data),
                               on_stage=lambda stage, event, _: status.update(f"compiling {model}: {stage}"))
    if not report["passed"]:
        raise MlpdeployError(f"compiling {model} failed validation; run `mlpdeploy compile {model} -o DIR` to see why")
    return out


def _data_feed(engine, task, batch: int) -> dict:
    """The first `batch` held-out samples of the task, as the artifact's inputs."""
    names = [spec.name for spec in engine.manifest.inputs]
    first = next(task.eval_batches(batch), None)
    if first is None or len(first[task.label_key]) < batch:
        raise MlpdeployError(f"--data holds fewer than {batch} held-out samples for --batch {batch}; give more data or a smaller --batch")
    missing = [n for n in names if n not in first]
    if missing:
        raise MlpdeployError(f"--data gives {', '.join(k for k in first if k != task.label_key)}, but {engine.path} takes {', '.join(names)}")
    return {n: first[n] for n in names}


def _bench_latency(engine, batches, sizes, warmup, iterations, min_seconds, task=None):
    from mlpdeploy.model.inputs import generate_inputs
    from mlpdeploy.runtime.latency import measure_latency

    known = set(engine.manifest.dims) | {"batch"}
    unknown = sorted(set(sizes) - known)
    if unknown:
        raise MlpdeployError(f"--dim {unknown[0]}: the artifact has no such dynamic dim; it has {', '.join(sorted(engine.manifest.dims)) or 'none'}")
    if engine.cache is not None:
        raise MlpdeployError(f"{engine.path} is a cached decoder; time it with --decode")
    if "batch" not in engine.manifest.dims and set(batches) != {1}:
        raise MlpdeployError(f"{engine.path} has no dynamic batch dim; drop --batch")
    rows = []
    with console.status("timing") as status:
        for batch in batches:
            dims = {**sizes, "batch": batch} if "batch" in engine.manifest.dims else dict(sizes)
            status.update(f"timing {_describe(dims)}")
            feed = generate_inputs(engine.manifest.inputs, dims=dims) if task is None else _data_feed(engine, task, batch)
            if task is not None:  # the data's shapes
                dims = {d: int(feed[spec.name].shape[axis]) for spec in engine.manifest.inputs for axis, d in spec.dynamic_axes.items()}
            rows.append(measure_latency(lambda feed=feed: engine(**feed), dims, dims.get("batch", 1), warmup, iterations, min_seconds))
    table = Table(title=f"latency: {engine.path.name}")
    for col in ("dims", "runs", "p50 ms", "p90 ms", "p99 ms", "samples/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(_describe(r.dims), str(r.runs), f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.throughput:.1f}")
    console.print(table)
    return rows


def _bench_decode(engine, contexts, new_tokens, batch, repeats, task=None):
    from mlpdeploy.runtime.generate import CachedGenerator
    from mlpdeploy.runtime.measure import generator_decode, measure_decode

    if engine.cache is None:
        raise MlpdeployError(f"{engine.path} has no KV cache; --decode needs a `compile --kv-cache` artifact")
    tokens = getattr(task, "eval_tokens", None)
    if task is not None and tokens is None:
        raise MlpdeployError(f"--decode --data needs text for a causal LM; {task.name} is a {task.kind} task")
    generator = CachedGenerator(engine)
    vocab = int(engine.manifest.input("input_ids").high or 2)
    too_long = [c for c in contexts if c + new_tokens > generator.layout.max_positions]
    if too_long:
        raise MlpdeployError(f"context {too_long[0]} + {new_tokens} new tokens exceeds the model's {generator.layout.max_positions} positions")
    rows = []
    with console.status("timing") as status:
        for context in contexts:
            status.update(f"timing context {context}")
            rows.append(measure_decode(generator_decode(generator), vocab, context, new_tokens, batch, repeats, tokens=tokens))
    table = Table(title=f"decode: {engine.path.name} (batch {batch}, {new_tokens} new tokens, {repeats} runs)")
    for col in ("context", "prefill ms", "decode ms/token p50", "p90", "tokens/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r.context), f"{r.prefill_ms:.2f}", f"{r.decode_ms_p50:.3f}", f"{r.decode_ms_p90:.3f}", f"{r.tokens_per_second:.1f}")
    console.print(table)
    return rows


def _describe(dims: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in dims.items()) or "static"
