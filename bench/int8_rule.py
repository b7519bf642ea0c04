"""Calibrate the int8-activation rule: a correct MatMulNBits build at accuracy level 4 against planted faults.

    python bench/int8_rule.py MODEL_DIR --data FILE [--pass quantize-weights:format=int4 ...]
                              [--layer N] [--factor 1.01 --factor 1.1] [--task-limit 16] [--json PATH]

Compiles MODEL_DIR with --kv-cache and the given passes (each a separate build), then copies the
built model with layers.N.mlp.down_proj's MatMulNBits scales multiplied by each factor (the same
fault as bench/validation_rules.py, on quantized weights; default N: the middle layer). Every
build and fault runs on the inputs `mlpdeploy validate` uses (held-out windows of FILE: a prefill,
then a decode step on torch's own prefill cache) against the torch reference that emulates the
int8 activation rounding, and each output is measured three ways:

  * rel_rms: ‖c − r‖₂ / ‖r‖₂ — the int8 rule (mlpdeploy.validate.tolerance, stat "rms");
  * mean_rel: mean |c − r| / RMS(r) — Polygraphy's check_error_stat="mean" with atol scaled by RMS;
  * elementwise: the share of atol 0.05 × RMS, rtol 0.05 the worst element took (the rule before).

plus the task metric (perplexity, top-1 agreement with the unquantized torch model). The worst
output per build is printed; a rule separates builds from faults when every build's worst sits
below every fault's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results  # noqa: E402


def _fault(built: Path, dst: Path, layer: int, factor: float) -> Path:
    """A copy of `built` whose layers.{layer}.mlp.down_proj MatMulNBits scales are multiplied by `factor`."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(built))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits" and f"layers.{layer}.mlp.down_proj" in n.name + " ".join(n.input)]
    if len(nodes) != 1:
        raise SystemExit(f"expected one MatMulNBits for layers.{layer}.mlp.down_proj, found {len(nodes)}")
    scales = inits[nodes[0].input[2]]
    scales.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scales) * np.float32(factor), scales.name))
    onnx.save(model, str(dst), save_as_external_data=model.ByteSize() > 2**31 - 1, location=f"{dst.name}.data")
    for suffix in (".manifest.json", ".session.json"):
        shutil.copyfile(built.with_name(built.name.replace(".onnx", suffix)), dst.with_name(dst.name.replace(".onnx", suffix)))
    return dst


def _measure(cand: np.ndarray, ref: np.ndarray) -> dict:
    from mlpdeploy.validate.tolerance import rms, used

    c, r = cand.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    scale = rms(r)
    diff = np.abs(c - r)
    return {"rel_rms": float(np.sqrt(np.mean(diff**2)) / scale), "mean_rel": float(diff.mean() / scale),
            "elementwise": used(c, r, 0.05 * scale, 0.05), "max_abs": float(diff.max()),
            "cosine": float(c @ r / (np.linalg.norm(c) * np.linalg.norm(r)))}


def _one_build(model_dir: Path, data: Path, spec: str, layer: int | None, factors: list[float], task_limit: int, tmp: Path) -> dict:
    from mlpdeploy.backends import load_candidate
    from mlpdeploy.compile import CompileOptions, _edited_reference, compile_model
    from mlpdeploy.model import load_model
    from mlpdeploy.model.kv_cache import with_kv_cache
    from mlpdeploy.model.tasks import DataOptions, attach_task
    from mlpdeploy.passes import reference_edits
    from mlpdeploy.passes.pipeline import parse_pass_spec
    from mlpdeploy.validate.inputs import validation_inputs
    from mlpdeploy.validate.outputs import Remembered, quiet_polygraphy
    from mlpdeploy.validate.runners import TorchRunner
    from mlpdeploy.validate.task import compare_task

    out = tmp / "out"
    data_options = DataOptions(path=data, seq_len=128)
    report = compile_model(str(model_dir), out, CompileOptions(kv_cache=True, data=data_options, passes=[parse_pass_spec(spec)], task_limit=task_limit))
    built = out / "model.ort.onnx"
    bundle = attach_task(with_kv_cache(load_model(str(model_dir))), data_options)
    layer = layer if layer is not None else len(bundle.cache.layers) // 2
    reference = _edited_reference(bundle, None, reference_edits(report["stages"]["rewrite"]["passes"]))
    manifest = load_candidate(built).manifest
    with quiet_polygraphy(), TorchRunner(reference, name="torch") as runner:
        run = Remembered(runner)
        inputs = validation_inputs(manifest.inputs, manifest.dims, task=bundle.task, cache=bundle.cache, run_reference=run)
        refs = [run(feed) for feed in inputs.feeds]
    bundle = attach_task(with_kv_cache(load_model(str(model_dir))), data_options)  # the edit released the weights
    results = {}
    for factor in [1.0, *factors]:
        path = built if factor == 1.0 else _fault(built, tmp / f"fault-{factor}.onnx", layer, factor)
        candidate = load_candidate(path)
        with quiet_polygraphy(), candidate.make_runner("candidate") as cand_runner:
            outs = [{k: np.asarray(v) for k, v in cand_runner.infer(feed).items()} for feed in inputs.feeds]
        measured = {f"{name} ({feed})": _measure(out[name], ref[name]) for feed, out, ref in zip(inputs.names, outs, refs) for name in ref}
        worst = {stat: max(measured.items(), key=lambda kv: kv[1][stat]) for stat in ("rel_rms", "mean_rel", "elementwise")}
        task = compare_task(bundle, candidate, limit=task_limit)
        name = "build" if factor == 1.0 else f"layers.{layer}.mlp.down_proj × {factor:g}"
        results[name] = {
            "worst": {stat: {"output": k, "value": v[stat]} for stat, (k, v) in worst.items()},
            "logits": {k: v for k, v in measured.items() if k.startswith("logits")},
            "task": {k: task.get(k) for k in ("metric", "reference", "candidate", "relative_delta", "agreement") if k in task},
        }
        print(f"  {name}: " + "; ".join(f"{stat} {w['value']:.4g} on {w['output']}" for stat, w in results[name]["worst"].items())
              + f"; task relative delta {task.get('relative_delta', float('nan')):+.4%}, top-1 agreement {task.get('agreement', float('nan')):.4f}",
              flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return {"layer": layer, "compile_validation_passed": report["validation"]["passed"], "inputs": inputs.source, "candidates": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--pass", dest="passes", action="append", help="one build per pass spec (default: quantize-weights:format=int4)")
    parser.add_argument("--layer", type=int)
    parser.add_argument("--factor", dest="factors", type=float, action="append")
    parser.add_argument("--task-limit", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    for spec in args.passes or ["quantize-weights:format=int4"]:
        print(f"{args.model_dir.name}, {spec}:", flush=True)
        with tempfile.TemporaryDirectory(prefix="mlpdeploy-int8rule-") as tmp:
            results[spec] = _one_build(args.model_dir, args.data, spec, args.layer, args.factors or [1.01, 1.1], args.task_limit, Path(tmp))
    out = write_results(f"int8_rule-{args.model_dir.name}", {"model": str(args.model_dir), "data": str(args.data), "builds": results}, args.json)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
