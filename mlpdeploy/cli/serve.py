"""`mlpdeploy package` (a Triton model repository) and `mlpdeploy serve` (a KServe v2 HTTP server)."""

from __future__ import annotations

from pathlib import Path

import click

from mlpdeploy.cli.app import cli, console, debug_option


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--triton", "repo", required=True, type=click.Path(path_type=Path), help="Triton model repository to write (created; other models in it stay).")
@click.option("--kserve", is_flag=True, help="Also write REPO/inferenceservice.yaml: a KServe InferenceService running Triton on the repository.")
@click.option("--storage-uri", help="Where the repository will be uploaded, for --kserve (e.g. s3://bucket/models; default: a placeholder to edit).")
@click.option("--max-batch-size", default=16, show_default=True, help="Triton max_batch_size for batchable models (capped at the exported batch range).")
@click.option("--instances", default=1, show_default=True, help="Model instances (instance_group count).")
@click.option("--max-queue-delay-us", default=100, show_default=True, help="Dynamic batcher: how long a request may wait for others.")
@debug_option
def package(models, repo, kserve, storage_uri, max_batch_size, instances, max_queue_delay_us, debug) -> None:
    """Package built MODELS (compile directories, built .onnx or TensorRT .engine files) as a Triton model repository.

    Each model becomes REPO/NAME/config.pbtxt + REPO/NAME/1/model.onnx (platform onnxruntime_onnx) or
    model.plan (tensorrt_plan). Decoders compiled with --kv-cache get Triton's sequence batcher with the
    cache as implicit state. Serve the repository with `tritonserver --model-repository REPO`.
    """
    from mlpdeploy.serving.package import package_triton
    from mlpdeploy.serving.triton_config import TritonOptions

    options = TritonOptions(max_batch_size=max_batch_size, instances=instances, max_queue_delay_us=max_queue_delay_us)
    written = package_triton(list(models), repo, options, kserve=kserve, storage_uri=storage_uri)
    for name, path in written.items():
        console.print(f"{name}: {path}/config.pbtxt", markup=False)
    if kserve:
        console.print(f"KServe: {repo}/inferenceservice.yaml", markup=False)
