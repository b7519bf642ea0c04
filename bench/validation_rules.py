"""How tolerance rules judge a real model: a correct fp32 build against a planted fault, one run.

    python bench/validation_rules.py BUILD_DIR MODEL_DIR --data FILE [--layer N] [--seq-len 128] [--json PATH]

BUILD_DIR is what `mlpdeploy compile MODEL_DIR --kv-cache -o BUILD_DIR` wrote. The planted fault is
a copy of its built model with layers.N.mlp.down_proj's weight scaled by 1.01 (default N: the
middle layer). Both run on the inputs `mlpdeploy validate` uses (validate/inputs.py: 2 held-out
windows of FILE, a 64-token prefill, then a one-token decode step on the KV cache torch computed
in that prefill) — and on generated inputs (random token ids, what validation falls back to
without a task) — and every output of every feed is judged by four rules:

  * mlpdeploy: atol 1e-3 × RMS(reference) per output, rtol 1e-3, Polygraphy's elementwise check;
  * mlpdeploy before: a fixed atol 1e-4, rtol 1e-3, the same check;
  * Polygraphy's default (`polygraphy run`, SimpleCompareFunc): atol 1e-5, rtol 1e-5, an element
    fails when over both;
  * Optimum's exporter check (`np.allclose(reference, onnx, atol=1e-5)`, numpy's rtol 1e-5):
    an element fails when |r − c| > 1e-5 + 1e-5·|c|.

For each rule and build: the verdict and the worst output's error as a share of what that rule
allows it (≤ 100% passes). A rule that tells the builds apart passes the first and fails the second.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results  # noqa: E402


def _rules():
    from mlpdeploy.validate.tolerance import rms

    def polygraphy(atol_of, rtol):  # the share of max(atol, rtol·|r|) the worst element takes
        def judge(c, r):
            diff, allowed = np.abs(c - r), np.maximum(atol_of(r), rtol * np.abs(r))
            return float(np.max(np.where(diff == 0, 0.0, diff / np.where(allowed > 0, allowed, np.inf))))
        return judge

    def allclose(c, r):  # np.allclose(r, c, atol=1e-5): |r − c| <= 1e-5 + 1e-5 * |c|
        return float(np.max(np.abs(r - c) / (1e-5 + 1e-5 * np.abs(c))))

    return {
        "mlpdeploy (atol 1e-3 × RMS, rtol 1e-3)": polygraphy(lambda r: 1e-3 * rms(r), 1e-3),
        "mlpdeploy before (atol 1e-4, rtol 1e-3)": polygraphy(lambda r: 1e-4, 1e-3),
        "Polygraphy default (atol 1e-5, rtol 1e-5)": polygraphy(lambda r: 1e-5, 1e-5),
        "Optimum exporter (allclose, atol 1e-5)": allclose,
    }


def _fault(built: Path, dst: Path, layer: int) -> Path:
    import shutil

    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(built))
    name = f"model.model.layers.{layer}.mlp.down_proj.weight_t"
    (init,) = [i for i in model.graph.initializer if i.name == name]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.01), name))
    onnx.save(model, str(dst), save_as_external_data=model.ByteSize() > 2**31 - 1, location=f"{dst.name}.data")
    for suffix in (".manifest.json", ".session.json"):
        shutil.copyfile(built.with_name(built.name.replace(".onnx", suffix)), dst.with_name(dst.name.replace(".onnx", suffix)))
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--layer", type=int)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from mlpdeploy.backends import load_candidate
    from mlpdeploy.model import load_model
    from mlpdeploy.model.kv_cache import with_kv_cache
    from mlpdeploy.model.tasks import DataOptions, attach_task
    from mlpdeploy.validate.inputs import validation_inputs
    from mlpdeploy.validate.outputs import Remembered, quiet_polygraphy
    from mlpdeploy.validate.runners import TorchRunner
    from mlpdeploy.validate.summary import percent

    bundle = attach_task(with_kv_cache(load_model(str(args.model_dir))), DataOptions(path=args.data, seq_len=args.seq_len))
    layer = args.layer if args.layer is not None else len(bundle.cache.layers) // 2
    built = args.build_dir / "model.ort.onnx"
    manifest = load_candidate(built).manifest
    feeds = {}
    with quiet_polygraphy(), TorchRunner(bundle, name="torch") as torch_runner:
        for kind, task in (("held-out text", bundle.task), ("generated ids", None)):
            run = Remembered(torch_runner)
            inputs = validation_inputs(manifest.inputs, manifest.dims, task=task, cache=bundle.cache, run_reference=run)
            feeds[kind] = (inputs, [run(feed) for feed in inputs.feeds])
    rules, results = _rules(), {}
    with tempfile.TemporaryDirectory(prefix="mlpdeploy-rules-") as tmp:
        for build, path in (("correct fp32 build", built), (f"layers.{layer}.mlp.down_proj × 1.01", None)):
            path = path or _fault(built, Path(tmp) / "fault.onnx", layer)
            with quiet_polygraphy(), load_candidate(path).make_runner("candidate") as runner:
                for kind, (inputs, references) in feeds.items():
                    outputs = [{k: np.asarray(v, np.float64) for k, v in runner.infer(feed).items()} for feed in inputs.feeds]
                    for rule, judge in rules.items():
                        judged = [(judge(out[name], ref[name].astype(np.float64)), f"{name} ({feed})", float(np.abs(out[name] - ref[name]).max()))
                                  for feed, out, ref in zip(inputs.names, outputs, references) for name in ref]
                        worst = max(judged, key=lambda w: w[0])
                        logits = max((j for j in judged if j[1].startswith("logits ")), key=lambda w: w[0], default=None)
                        results.setdefault(kind, {}).setdefault(rule, {})[build] = {
                            "passed": worst[0] <= 1.0, "worst_share": worst[0], "worst_output": worst[1], "max_abs": worst[2],
                            **({"logits_share": logits[0], "logits_max_abs": logits[2]} if logits else {})}
    for kind, (inputs, _) in feeds.items():
        print(f"{args.model_dir.name}, {kind}: {inputs.source}")
        for rule, by_build in results[kind].items():
            cells = "; ".join(f"{build}: {'PASS' if r['passed'] else 'FAIL'} ({percent(r['worst_share'])} on {r['worst_output']}, "
                              f"max abs {r['max_abs']:.3g}" + (f"; logits {percent(r['logits_share'])}, max abs {r['logits_max_abs']:.3g}"
                                                              if "logits_share" in r else "") + ")" for build, r in by_build.items())
            print(f"  {rule}: {cells}")
    out = write_results(f"validation_rules-{args.model_dir.name}", {"model": str(args.model_dir), "data": str(args.data), "layer": layer,
                                                                     "inputs": {k: v[0].source for k, v in feeds.items()}, "rules": results},
                        args.json)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
