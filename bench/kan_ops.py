"""ONNX Runtime CPU: GroupRational (GR-KAN) as the portable function body vs the compiled kernel vs
a plain export vs torch eager vs one GELU pass, side by side; and kat-tiny end to end.

    python bench/kan_ops.py [--shape 16,197,768] [--groups 8] [--threads N] [--repeats 20] [--json PATH]

Candidates, all on the same fp32 input, timed round robin call by call (drift on a shared
machine hits every one alike); reported: median and min ms, and each over the GELU pass:
  body        mlpdeploy::GroupRational in ONNX Runtime without the kernel library: ORT inlines
              the portable function body (standard ops), the default
  kernel      the same model with mlpdeploy's compiled CPU kernel registered (--ort-kernels);
              skipped, with the reason, when no C compiler is found
  decomposed  a plain torch.onnx.export of the torch reference (reshape to groups, Horner, abs,
              div as separate ops): what exporting a pure-torch KAT activation gives
  torch       the torch reference in eager mode (KAT's pure-torch path does the same work)
  gelu        ONNX `Gelu` (opset 20): one elementwise pass, what the issue compares with
  relu        ONNX `Relu`: one elementwise pass with next to no arithmetic, the memory floor
Every candidate's output is checked against the torch reference first.
kat-tiny: the ONNX Runtime build without and with --ort-kernels, and torch eager, batch 64.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, cpu_session, machine, write_results  # noqa: E402

from mlpdeploy.errors import MlpdeployError  # noqa: E402
from mlpdeploy.plugins.group_rational.onnx_function import make_model  # noqa: E402
from mlpdeploy.plugins.group_rational.reference import group_rational  # noqa: E402
from mlpdeploy.plugins.ort import library  # noqa: E402


class Decomposed(torch.nn.Module):
    """The torch reference as a module: exports as standard elementwise ops."""

    def __init__(self, numerator, denominator, form):
        super().__init__()
        self.register_buffer("numerator", numerator)
        self.register_buffer("denominator", denominator)
        self.form = form

    def forward(self, x):
        return group_rational(x, self.numerator, self.denominator, self.form)


def decomposed_model(numerator, denominator, form, example) -> onnx.ModelProto:
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Decomposed(numerator, denominator, form), (example,), dynamo=True, input_names=["x"], verbose=False)
    return ir.to_proto(program.model)


def one_op_model(op_type: str, shape) -> onnx.ModelProto:
    h = onnx.helper
    node = h.make_node(op_type, ["x"], ["y"])
    info = [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, list(shape)) for n in ("x", "y")]
    return h.make_model(h.make_graph([node], op_type.lower(), info[:1], info[1:]), opset_imports=[h.make_opsetid("", 20)])


def round_robin(fns: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Call every candidate once per round, in rotating order; ms per call for each."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append((time.perf_counter() - start) * 1e3)
    return times


def summarize(times: dict[str, list[float]], base: str) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    return {k: {"median_ms": round(med[k], 3), "min_ms": round(min(v), 3), f"over_{base}": round(med[k] / med[base], 2),
                "all_ms": [round(t, 3) for t in v]} for k, v in times.items()}


def build_kernels(directory: Path) -> tuple[Path | None, str | None]:
    try:
        return library.build_library(directory), None
    except MlpdeployError as exc:
        return None, str(exc)


def op_benchmark(args, kernels: Path | None) -> dict:
    shape = tuple(int(s) for s in args.shape.split(","))
    channels = shape[-1]
    model = make_model(channels, args.groups, form=args.form, shared_numerator=True, seed=0)
    numerator, denominator = (torch.from_numpy(model.graph.initializers[k].const_value.numpy()) for k in ("numerator", "denominator"))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    xt = torch.from_numpy(x)
    reference = group_rational(xt, numerator, denominator, args.form).numpy()
    sessions = {"body": cpu_session(model, args.threads)}
    if kernels is not None:
        sessions["kernel"] = cpu_session(model, args.threads, kernels)
    sessions["decomposed"] = cpu_session(decomposed_model(numerator, denominator, args.form, xt), args.threads)
    sessions["gelu"] = cpu_session(one_op_model("Gelu", shape), args.threads)
    sessions["relu"] = cpu_session(one_op_model("Relu", shape), args.threads)
    errors = {}
    for name, sess in sessions.items():
        if name not in ("gelu", "relu"):
            errors[name] = float(np.abs(sess.run(None, {"x": x})[0] - reference).max())
    fns = {name: (lambda s=sess: s.run(None, {"x": x})) for name, sess in sessions.items()}
    fns["torch"] = lambda: group_rational(xt, numerator, denominator, args.form)
    times = round_robin(fns, args.warmup, args.repeats)
    gb = 2 * x.nbytes / 1e9
    results = summarize(times, "gelu")
    for r in results.values():
        r["GB_per_s"] = round(gb / (r["median_ms"] / 1e3), 2)
    return {"shape": list(shape), "groups": args.groups, "degrees": [5, 4], "form": args.form, "max_abs_error_vs_torch": errors,
            "results": results}


def kat_benchmark(args, kernels: Path | None, workdir: Path) -> dict:
    from mlpdeploy.backends import get_backend
    from mlpdeploy.backends.onnxruntime import OrtOptions
    from mlpdeploy.backends.onnxruntime.loader import session_from_artifact
    from mlpdeploy.export import export_model
    from mlpdeploy.model import load_model

    bundle = load_model("kat-tiny")
    exported = export_model(bundle, workdir / "kat.onnx")
    backend = get_backend("onnxruntime")
    built = {"body": backend.build(exported.model_path, workdir / "kat.ort.onnx", OrtOptions(device="cpu"))}
    if kernels is not None:
        opts = OrtOptions(device="cpu", kernels=True, cache_dir=workdir / "cache")
        built["kernel"] = backend.build(exported.model_path, workdir / "kernel" / "kat.ort.onnx", opts)
    x = np.random.default_rng(1).uniform(-1, 1, (args.kat_batch, 1, 8, 8)).astype(np.float32)
    sessions = {}
    for name, result in built.items():
        sessions[name] = session_from_artifact(result.artifacts["model"], threads=args.threads)
    fns = {name: (lambda s=s: s.run(None, {"pixel_values": x})) for name, s in sessions.items()}
    xt = torch.from_numpy(x)

    def eager():
        with torch.no_grad():
            return bundle.module(xt)

    fns["torch"] = eager
    times = round_robin(fns, args.warmup, args.repeats)
    return {"batch": args.kat_batch, "results": summarize(times, "body")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="16,197,768", help="input shape, channels last (ViT-B activation)")
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--form", default="A", choices=["A", "B"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--kat-batch", type=int, default=64)
    parser.add_argument("--json", default=str(RESULTS / "kan_ops.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["MLPDEPLOY_ORT_THREADS"] = str(args.threads)  # the compiled kernel's threads, like ORT's intra-op ones
    info = {**machine(), "threads": args.threads}
    print(f"machine: {info['cpu']}, {info['cores']} cores; ONNX Runtime {info['onnxruntime']} CPU, torch {info['torch']}, {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp:
        kernels, why_not = build_kernels(Path(tmp) / "ort-kernels")
        if kernels is None:
            print(f"compiled kernel: not measured ({why_not})")
        op = op_benchmark(args, kernels)
        print(f"\nGroupRational {tuple(op['shape'])}, {args.groups} groups, degrees (5, 4), form {args.form}, fp32; "
              f"max |error| vs torch: {', '.join(f'{k} {v:.1e}' for k, v in op['max_abs_error_vs_torch'].items())}")
        print(f"{'candidate':12s} {'median ms':>10s} {'min ms':>8s} {'x GELU':>7s} {'GB/s':>6s}")
        for name, r in op["results"].items():
            print(f"{name:12s} {r['median_ms']:10.2f} {r['min_ms']:8.2f} {r['over_gelu']:7.2f} {r['GB_per_s']:6.1f}")
        kat = kat_benchmark(args, kernels, Path(tmp))
        print(f"\nkat-tiny end to end, batch {kat['batch']}")
        print(f"{'candidate':12s} {'median ms':>10s} {'min ms':>8s} {'x body':>7s}")
        for name, r in kat["results"].items():
            print(f"{name:12s} {r['median_ms']:10.2f} {r['min_ms']:8.2f} {r['over_body']:7.2f}")
    out = write_results("kan_ops", {"machine": info, "compiled_kernel": why_not or "built", "group_rational": op, "kat_tiny": kat}, args.json)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
