"""`mlpdeploy package` (a Triton model repository) and `mlpdeploy serve` (a KServe v2 HTTP server)."""

from __future__ import annotations

from pathlib import Path

import click

from mlpdeploy.cli.app import cli, console, debug_option
from mlpdeploy.cli.options import SPECULATIVE
from mlpdeploy.errors import MlpdeployError


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--triton", "repo", required=True, type=click.Path(path_type=Path), help="Triton model repository to write (created; other models in it stay).")
@click.option("--kserve", is_flag=True, help="Also write REPO/inferenceservice.yaml: a KServe InferenceService running Triton on the repository.")
@click.option("--storage-uri", help="Where the repository will be uploaded, for --kserve (e.g. s3://bucket/models; default: a placeholder to edit).")
@click.option("--max-batch-size", default=16, show_default=True, help="Triton max_batch_size for batchable models (capped at the exported batch range); python-backend decoders: sequences generating at once.")
@click.option("--instances", default=1, show_default=True, help="Model instances (instance_group count).")
@click.option("--max-queue-delay-us", default=100, show_default=True, help="Dynamic batcher: how long a request may wait for others "
              "(python-backend decoders: how long an idle scheduler waits for more requests).")
@click.option("--max-cache-tokens", type=int, help="Python-backend decoders: the scheduler's KV cache budget, prompt + max_tokens summed "
              "over the sequences admitted at once [default: max-batch-size x min(context, 2048)].")
@click.option("--max-queue-size", default=0, show_default=True, help="Python-backend decoders: requests that may wait beyond the batch "
              "and budget; more are refused UNAVAILABLE (HTTP 503) (0: no limit).")
@click.option("--triton-backend", type=click.Choice(["native", "python"]), default="native", show_default=True,
              help="native: Triton's onnxruntime / tensorrt backends; python: a model.py running mlpdeploy's runtime "
                   "(decoupled streaming generate for --kv-cache decoders).")
@click.option("--triton-python-env", metavar="PATH|none",
              help="With --triton-backend python: the Python environment (with mlpdeploy) Triton runs model.py in, "
                   "written as EXECUTION_ENV_PATH [default: this Python's environment; none: the server's own Python].")
@debug_option
def package(models, repo, kserve, storage_uri, max_batch_size, instances, max_queue_delay_us, max_cache_tokens, max_queue_size, triton_backend,
            triton_python_env, debug) -> None:
    """Package built MODELS (compile directories, built .onnx or TensorRT .engine files) as a Triton model repository.

    Each model becomes REPO/NAME/config.pbtxt + REPO/NAME/1/model.onnx (platform onnxruntime_onnx) or
    model.plan (tensorrt_plan). Decoders compiled with --kv-cache get Triton's sequence batcher with the
    cache as implicit state. With --triton-backend python each model is instead a model.py that runs the
    build with mlpdeploy's runtime (cached decoders: decoupled generate). Serve the repository with
    `tritonserver --model-repository REPO` (or the bundled one: `python -m mlpdeploy.serving.tritonserver REPO`).
    """
    from mlpdeploy.serving.package import package_triton
    from mlpdeploy.serving.triton_config import TritonOptions

    if triton_python_env is not None and triton_backend != "python":
        raise MlpdeployError("--triton-python-env applies to --triton-backend python only; add --triton-backend python or drop it")
    options = TritonOptions(max_batch_size=max_batch_size, instances=instances, max_queue_delay_us=max_queue_delay_us,
                            max_cache_tokens=max_cache_tokens, max_queue_size=max_queue_size)
    written = package_triton(list(models), repo, options, kserve=kserve, storage_uri=storage_uri, backend=triton_backend,
                             python_env=triton_python_env)
    for name, path in written.items():
        console.print(f"{name}: {path}/config.pbtxt", markup=False)
    if kserve:
        console.print(f"KServe: {repo}/inferenceservice.yaml", markup=False)


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, help="Port (Triton's HTTP default; 0 picks a free one).")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads per model (default: the build's setting).")
@click.option("--max-body-mb", default=64, show_default=True, help="Largest request body accepted (413 beyond).")
@click.option("--grace", default=30.0, show_default=True, help="Seconds requests in flight may finish after SIGTERM.")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--max-batch-size", default=16, show_default=True, help="Decoders: sequences generating at once, one decode step for all (as package's max_batch_size).")
@click.option("--max-queue-delay-us", default=100, show_default=True, help="Decoders: how long an idle scheduler waits for more requests before it starts.")
@click.option("--max-cache-tokens", type=int, help="Decoders: the KV cache budget, prompt + max_tokens summed over the sequences admitted at once "
              "(more wait) [default: max-batch-size x min(context, 2048)].")
@click.option("--max-queue-size", default=0, show_default=True, help="Decoders: requests that may wait beyond the batch and budget; more get 503 (0: no limit).")
@click.option("--prefill", default="auto", show_default=True, type=click.Choice(["auto", "fused", "separate"]),
              help="Decoders: fused runs a joining prompt's chunks inside the others' decode steps (builds with --ort-kernels' "
                   "CachedAttention), separate as steps of their own between theirs; auto: fused where the build allows.")
@click.option("--prefill-stall", default=1.0, show_default=True, type=float,
              help="Decoders: while others decode, a joining prompt's chunks each delay their next token by about this many "
                   "decode steps (lower: shorter gaps for them, a later first token for the prompt; docs/serving.md).")
@click.option("--prefill-min-chunk", default=4, show_default=True, type=int,
              help="Decoders: the fewest prompt tokens a prefill chunk takes (smaller chunks cost more per token).")
@click.option("--prefix-cache-mb", default=128, show_default=True, type=int,
              help="Decoders: finished prompts' KV caches kept (MiB, least recently used out first), so a prompt that starts "
                   "like one of them (a chat template, a system prompt) prefills only the rest; 0: off.")
@SPECULATIVE
@debug_option
def serve(models, host, port, threads, max_body_mb, grace, log_level, max_batch_size, max_queue_delay_us, max_cache_tokens, max_queue_size,
          prefill, prefill_stall, prefill_min_chunk, prefix_cache_mb, speculative, debug) -> None:
    """Serve built MODELS over HTTP with the KServe v2 protocol, as Triton does (tritonclient works unchanged).

    Endpoints: /v2/health/live|ready, /v2/models/NAME[/versions/1][/ready|/config], POST .../infer (JSON and
    binary tensors), POST .../generate and .../generate_stream (server-sent events) for decoders compiled
    with --kv-cache — in-flight batching: one decode step for every sequence generating — and /metrics
    (Prometheus). A model's NAME is its compile directory's name (or the built file's stem). SIGTERM shuts
    down gracefully.
    """
    from mlpdeploy.runtime.scheduler import Scheduler, SchedulerOptions
    from mlpdeploy.serving.server import Server

    batching = SchedulerOptions(max_batch=max_batch_size, max_queue_delay_us=max_queue_delay_us, max_cache_tokens=max_cache_tokens,
                                max_queue_size=max_queue_size, prefill_stall=prefill_stall, smallest_chunk=prefill_min_chunk,
                                prefix_cache_mb=prefix_cache_mb, prefill=prefill)
    server = Server(list(models), host, port, threads, max_body_mb << 20, log_level, grace, speculative, batching)
    for name, model in server.models.items():
        kind = "infer + generate" if model.generator is not None else "infer"
        if isinstance(model.scheduler, Scheduler):
            kind += (f", in-flight batching of {max_batch_size}, cache budget {model.scheduler.budget} tokens, "
                     f"{'fused' if model.scheduler.fused else 'separate'} prefill")
        elif model.scheduler is not None:
            kind += ", one request per thread (the build has no per-row cache lengths: rebuild it to batch)"
        if model.generator is not None and model.generator.drafter is not None:
            kind += f", speculative {model.generator.drafter.describe()}" + (" when one sequence runs" if isinstance(model.scheduler, Scheduler) else "")
        console.print(f"{name}: {model.engine.path} ({model.engine.runtime}; {kind})", markup=False)
    console.print(f"serving on http://{server.url}/v2 (Ctrl-C or SIGTERM to stop)", markup=False, highlight=False)
    server.run()
