"""`mlpdeploy bench`: measure a built artifact (or a model compiled on the spot) on this machine."""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path

import click
from rich.table import Table

from mlpdeploy.cli.app import cli, console, debug_option
from mlpdeploy.cli.options import dims_option
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
@click.option("--new-tokens", default=32, show_default=True, help="Tokens decoded per run (--decode).")
@click.option("--repeats", default=3, show_default=True, help="Timed runs per context after one warm-up (--decode).")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: the build's setting).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the results as JSON here.")
@debug_option
def bench(target, decode, batches, dims, warmup, iterations, min_seconds, contexts, new_tokens, repeats, threads, json_path, debug) -> None:
    """Time TARGET: a built artifact (a `compile` directory or its .onnx), or a MODEL spec, which is
    first compiled with the defaults (ONNX Runtime) into a temporary directory.

    Latency mode (default): p50/p90/p99 ms per run and samples/s for each --batch, with random
    inputs at the given dim sizes. --decode: prefill ms and decode ms/token p50/p90 per context.
    Both report the model's bytes on disk and this process's peak memory.
    """
    from mlpdeploy.atomic import write_json
    from mlpdeploy.runtime.engine import Engine
    from mlpdeploy.runtime.latency import model_bytes, peak_rss_bytes

    with tempfile.TemporaryDirectory(prefix="mlpdeploy-bench-") as scratch:
        artifact = Path(target) if Path(target).exists() else _compile_for_bench(target, Path(scratch) / "build", decode)
        engine = Engine.load(artifact, threads=threads)
        if decode:
            mode, rows = "decode", _bench_decode(engine, contexts, new_tokens, batches[0], repeats)
        else:
            mode, rows = "latency", _bench_latency(engine, batches, dims, warmup, iterations, min_seconds)
        size, peak = model_bytes(engine.path), peak_rss_bytes()
    console.print(f"model bytes: {size / 2**20:.2f} MiB   peak memory (this process): {peak / 2**20:.0f} MiB", markup=False)
    if json_path:
        threads_used = engine.session.get_session_options().intra_op_num_threads if engine.session is not None else None
        write_json(json_path, {
            "target": target, "artifact": str(engine.path), "mode": mode, "machine": platform.processor() or platform.machine(),
            "runtime": engine.runtime, "intra_op_num_threads": threads_used, "model_bytes": size, "peak_rss_bytes": peak,
            "results": [r.to_json() for r in rows],
        })


def _compile_for_bench(model: str, out: Path, decode: bool) -> Path:
    from mlpdeploy.compile import CompileOptions, compile_model

    with console.status(f"compiling {model} (no artifact at that path)") as status:
        report = compile_model(model, out, CompileOptions(kv_cache=decode),
                               on_stage=lambda stage, event, _: status.update(f"compiling {model}: {stage}"))
    if not report["passed"]:
        raise MlpdeployError(f"compiling {model} failed validation; run `mlpdeploy compile {model} -o DIR` to see why")
    return out


def _bench_latency(engine, batches, sizes, warmup, iterations, min_seconds):
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
            feed = generate_inputs(engine.manifest.inputs, dims=dims)
            rows.append(measure_latency(lambda feed=feed: engine(**feed), dims, dims.get("batch", 1), warmup, iterations, min_seconds))
    table = Table(title=f"latency: {engine.path.name}")
    for col in ("dims", "runs", "p50 ms", "p90 ms", "p99 ms", "samples/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(_describe(r.dims), str(r.runs), f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}", f"{r.throughput:.1f}")
    console.print(table)
    return rows


def _bench_decode(engine, contexts, new_tokens, batch, repeats):
    from mlpdeploy.runtime.generate import CachedGenerator
    from mlpdeploy.runtime.measure import generator_decode, measure_decode

    if engine.cache is None:
        raise MlpdeployError(f"{engine.path} has no KV cache; --decode needs a `compile --kv-cache` artifact")
    generator = CachedGenerator(engine)
    vocab = int(engine.manifest.input("input_ids").high or 2)
    too_long = [c for c in contexts if c + new_tokens > generator.layout.max_positions]
    if too_long:
        raise MlpdeployError(f"context {too_long[0]} + {new_tokens} new tokens exceeds the model's {generator.layout.max_positions} positions")
    rows = []
    with console.status("timing") as status:
        for context in contexts:
            status.update(f"timing context {context}")
            rows.append(measure_decode(generator_decode(generator), vocab, context, new_tokens, batch, repeats))
    table = Table(title=f"decode: {engine.path.name} (batch {batch}, {new_tokens} new tokens, {repeats} runs)")
    for col in ("context", "prefill ms", "decode ms/token p50", "p90", "tokens/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r.context), f"{r.prefill_ms:.2f}", f"{r.decode_ms_p50:.3f}", f"{r.decode_ms_p90:.3f}", f"{r.tokens_per_second:.1f}")
    console.print(table)
    return rows


def _describe(dims: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in dims.items()) or "static"
