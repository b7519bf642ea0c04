"""Held-out perplexity of built cached decoders on a user's text: what a lossy format costs.

    python bench/heldout.py --model DIR --data FILE.jsonl ARTIFACT [ARTIFACT ...] [--limit N] [--json PATH]

The task is `--data`'s (mlpdeploy.model.tasks: the model's own tokenizer, documents split into
calibration and held-out, held-out windows of 256 tokens); each ARTIFACT (an .onnx with a KV
cache: an mlpdeploy build, or onnxruntime-genai's model.onnx) runs every held-out window as a
prefill in ONNX Runtime; the float32 torch model is the reference. Reports perplexity, its
change relative to torch, top-1 agreement with torch, and model bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results  # noqa: E402


def heldout_perplexity(model_dir: Path, data: Path, artifacts: dict[str, Path], threads: int = 2, limit: int | None = None,
                       batch_size: int = 4) -> dict:
    """name -> {"perplexity", "relative_delta", "agreement", "bytes"} for torch ("torch fp32") and each artifact."""
    from mlpdeploy.backends.onnxruntime.loader import session_from_artifact
    from mlpdeploy.model import load_model
    from mlpdeploy.model.kv_cache import prefill_feed, with_kv_cache
    from mlpdeploy.model.tasks import DataOptions, resolve_task
    from mlpdeploy.model.torch_run import first_output_fn
    from mlpdeploy.runtime.latency import model_bytes

    bundle = with_kv_cache(load_model(str(model_dir)))
    task = resolve_task(bundle, DataOptions(path=data))
    layout = bundle.cache
    names = [s.name for s in bundle.inputs]
    torch_run = first_output_fn(bundle.module, names)
    reference = task.evaluate(lambda feed: torch_run(prefill_feed(feed["input_ids"], layout)), batch_size=batch_size, limit=limit)
    results = {"torch fp32": {"perplexity": reference["value"], "relative_delta": 0.0, "agreement": 1.0, "samples": reference["samples"]}}
    for name, path in artifacts.items():
        # the settings its build saved (an --ort-kernels build's library), else the defaults (genai's model)
        session = session_from_artifact(path, threads=threads)
        wanted = {i.name for i in session.get_inputs()}

        def run(feed, session=session, wanted=wanted):
            full = prefill_feed(feed["input_ids"], layout)
            return session.run(["logits"], {k: v for k, v in full.items() if k in wanted})[0]

        got = task.evaluate(run, batch_size=batch_size, limit=limit)
        results[name] = {"perplexity": got["value"], "relative_delta": got["value"] / reference["value"] - 1,
                         "agreement": task.agreement(reference["predictions"], got["predictions"]), "samples": got["samples"],
                         "bytes": model_bytes(Path(path))}
    return {"task": task.describe(), "results": results}


def print_heldout(report: dict) -> None:
    task = report["task"]
    print(f"held-out perplexity on {task['name']} ({task['eval_samples']} windows of {task.get('seq_len', '?')} tokens; torch fp32 reference)")
    for name, r in report["results"].items():
        size = f"{r['bytes'] / 1e6:7.1f} MB" if "bytes" in r else " " * 10
        print(f"  {name:28s} perplexity {r['perplexity']:8.3f} ({r['relative_delta']:+7.2%})  top-1 agreement {r['agreement']:.3f}  {size}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the Hugging Face directory the artifacts were built from")
    parser.add_argument("--data", required=True)
    parser.add_argument("artifacts", nargs="+", help="NAME=PATH.onnx (or PATH.onnx, named by its folder)")
    parser.add_argument("--limit", type=int, default=None, help="held-out windows to use (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    artifacts = {}
    for spec in args.artifacts:
        name, _, path = spec.rpartition("=")
        artifacts[name or Path(path).parent.name] = Path(path)
    report = heldout_perplexity(Path(args.model), Path(args.data), artifacts, args.threads, args.limit)
    print_heldout(report)
    print(f"wrote {write_results('heldout', report, args.json)}")


if __name__ == "__main__":
    main()
