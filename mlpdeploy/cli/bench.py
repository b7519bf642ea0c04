"""`mlpdeploy bench`: measure a built artifact on this machine."""

from __future__ import annotations

import platform
from pathlib import Path

import click
from rich.table import Table

from mlpdeploy.cli.app import cli, console, debug_option
from mlpdeploy.errors import MlpdeployError


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--decode", is_flag=True, required=True, help="Time prefill and per-token decode of a --kv-cache artifact.")
@click.option("--context", "contexts", multiple=True, type=int, default=(16, 128, 512), show_default=True,
              help="Prompt length(s) before decoding; repeatable.")
@click.option("--new-tokens", default=32, show_default=True, help="Tokens decoded per run.")
@click.option("--batch", default=1, show_default=True)
@click.option("--repeats", default=3, show_default=True, help="Timed runs per context (after one warm-up).")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: the build's setting).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the results as JSON here.")
@debug_option
def bench(artifact, decode, contexts, new_tokens, batch, repeats, threads, json_path, debug) -> None:
    """Time ARTIFACT (a `compile --kv-cache` directory or its .ort.onnx): prefill ms, decode ms/token p50/p90, tokens/s."""
    from mlpdeploy.atomic import write_json
    from mlpdeploy.runtime.engine import Engine
    from mlpdeploy.runtime.generate import CachedGenerator
    from mlpdeploy.runtime.measure import generator_decode, measure_decode

    engine = Engine.load(artifact, threads=threads)
    generator = CachedGenerator(engine)
    vocab = int(engine.manifest.input("input_ids").high or 2)
    too_long = [c for c in contexts if c + new_tokens > generator.layout.max_positions]
    if too_long:
        raise MlpdeployError(f"context {too_long[0]} + {new_tokens} new tokens exceeds the model's {generator.layout.max_positions} positions")
    results = []
    with console.status("timing") as status:
        for context in contexts:
            status.update(f"timing context {context}")
            results.append(measure_decode(generator_decode(generator), vocab, context, new_tokens, batch, repeats))
    table = Table(title=f"decode: {engine.path.name} (batch {batch}, {new_tokens} new tokens, {repeats} runs)")
    for col in ("context", "prefill ms", "decode ms/token p50", "p90", "tokens/s"):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(str(r.context), f"{r.prefill_ms:.2f}", f"{r.decode_ms_p50:.3f}", f"{r.decode_ms_p90:.3f}", f"{r.tokens_per_second:.1f}")
    console.print(table)
    if json_path:
        session = engine.session.get_session_options()
        write_json(json_path, {
            "artifact": str(engine.path), "mode": "decode", "machine": platform.processor() or platform.machine(),
            "intra_op_num_threads": session.intra_op_num_threads, "results": [r.to_json() for r in results],
        })
