"""ONNX Runtime's GroupQueryAttention against mlpdeploy's CachedAttention kernel, one node alone.

    python bench/attention_kernel.py [--rows 1,8,16] [--contexts 128,512] [--prefill 1000] [--threads 2]
        [--heads 9 --kv-heads 3 --head-size 64] [--json PATH]

Decode: r rows of a shared cache buffer (bound as past and present through IO binding, as
`runtime.step` binds it), each row `context` − 0..6 tokens long, one new token each. Prefill: one
row of `--prefill` tokens, empty past. SmolLM2-135M's attention shape by default. Each cell is the
node's kernel time from ONNX Runtime's profiler (median µs), the best of 2 sessions per variant,
the variants taking turns.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, settle, write_results  # noqa: E402

MAX_POSITIONS = 4096
SPREAD = 7


def model(kind: str, heads: int, kv_heads: int, head_size: int):
    import onnx
    from onnx import TensorProto, helper

    from mlpdeploy.contract import DOMAIN, MS_DOMAIN
    from mlpdeploy.plugins.cached_attention.onnx_function import OP, cached_attention_function

    vi = helper.make_tensor_value_info
    inputs = [vi("qkv", TensorProto.FLOAT, ["b", "s", (heads + 2 * kv_heads) * head_size]),
              vi("past_key", TensorProto.FLOAT, ["b", kv_heads, "c", head_size]), vi("past_value", TensorProto.FLOAT, ["b", kv_heads, "c", head_size]),
              vi("seqlens_k", TensorProto.INT32, ["b"]), vi("total", TensorProto.INT32, []), vi("position_ids", TensorProto.INT64, ["b", "s"]),
              vi("bias", TensorProto.FLOAT, ["b", 1, "s", "t"]), vi("query_seqlens", TensorProto.INT32, ["b"])]
    angles = np.arange(MAX_POSITIONS)[:, None] * (10000.0 ** (-np.arange(head_size // 2) / (head_size // 2)))[None]
    tables = [onnx.numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos"), onnx.numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin")]
    outputs = [vi("out", TensorProto.FLOAT, None), vi("present_key", TensorProto.FLOAT, None), vi("present_value", TensorProto.FLOAT, None)]
    names = ["out", "present_key", "present_value"]
    if kind == "gqa":
        node = helper.make_node("GroupQueryAttention", ["qkv", "", "", "past_key", "past_value", "seqlens_k", "total", "cos", "sin", "position_ids",
                                                        "bias", "", "", "", "", "", "query_seqlens"], names, domain=MS_DOMAIN, num_heads=heads,
                                kv_num_heads=kv_heads, scale=head_size ** -0.5, do_rotary=1, rotary_interleaved=0)
    else:
        node = helper.make_node(OP, ["qkv", "past_key", "past_value", "seqlens_k", "total", "cos", "sin", "position_ids", "bias", "query_seqlens"],
                                names, domain=DOMAIN, num_heads=heads, kv_num_heads=kv_heads, scale=head_size ** -0.5)
    proto = helper.make_model(helper.make_graph([node], "attention", inputs, outputs, tables),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(MS_DOMAIN, 1), helper.make_opsetid(DOMAIN, 1)])
    if kind != "gqa":
        proto.functions.append(cached_attention_function())
    return proto


def node_us(kind: str, shape: tuple, rows: int, seq: int, context: int, threads: int, library_path, repeats: int) -> float:
    """Median µs of the attention node over `repeats` runs (after 5), from ONNX Runtime's profile."""
    import onnxruntime as ort

    from mlpdeploy.plugins.ort.library import register

    heads, kv_heads, head_size = shape
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level, options.enable_profiling = threads, 3, True
    options.profile_file_prefix = os.path.join(tempfile.gettempdir(), f"attention_kernel_{os.getpid()}")
    if kind != "gqa":
        register(options, library_path)
    session = ort.InferenceSession(model(kind, heads, kv_heads, head_size).SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    capacity = context + seq + 16
    lengths = context + seq - np.arange(rows) % SPREAD
    total = int(lengths.max())
    cache = [ort.OrtValue.ortvalue_from_numpy(rng.standard_normal((rows, kv_heads, capacity, head_size)).astype(np.float32)) for _ in range(2)]
    first = lengths - seq
    keep = np.arange(total)[None, None, None] <= (first[:, None, None, None] + np.arange(seq)[None, None, :, None])
    feeds = {"qkv": rng.standard_normal((rows, seq, (heads + 2 * kv_heads) * head_size)).astype(np.float32),
             "seqlens_k": (lengths - 1).astype(np.int32), "total": np.array(total, np.int32),
             "position_ids": (first[:, None] + np.arange(seq)[None]).astype(np.int64),
             "bias": np.where(keep, 0.0, np.finfo(np.float32).min).astype(np.float32), "query_seqlens": np.full(rows, seq, np.int32)}
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, array)
    binding.bind_ortvalue_input("past_key", cache[0])
    binding.bind_ortvalue_input("past_value", cache[1])
    binding.bind_output("out", "cpu")
    binding.bind_ortvalue_output("present_key", cache[0])
    binding.bind_ortvalue_output("present_value", cache[1])
    for _ in range(repeats + 5):
        session.run_with_iobinding(binding)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    times = [e["dur"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")][5:]
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,8,16")
    parser.add_argument("--contexts", default="128,512")
    parser.add_argument("--prefill", type=int, default=1000, help="tokens of the one-row prefill (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from mlpdeploy.plugins.ort.library import build_library

    library_path = build_library(Path(tempfile.gettempdir()) / "mlpdeploy-bench-ort-kernels")
    shape = (args.heads, args.kv_heads, args.head_size)
    cases = [(rows, 1, context) for context in (int(c) for c in args.contexts.split(",")) for rows in (int(r) for r in args.rows.split(","))]
    if args.prefill:
        cases.append((1, args.prefill, 0))
    results = []
    print(f"attention node, {args.heads} heads / {args.kv_heads} kv heads × {args.head_size}, {args.threads} threads, µs (ONNX Runtime's profile)")
    print(f"{'rows':>5} {'tokens':>7} {'context':>8} {'GQA':>10} {'CachedAttention':>16} {'speedup':>8}")
    for rows, seq, context in cases:
        repeats = 300 if seq == 1 else 10
        best = {"gqa": float("inf"), "kernel": float("inf")}
        for _ in range(2):
            for kind in best:
                settle()
                best[kind] = min(best[kind], node_us(kind, shape, rows, seq, context, args.threads, library_path, repeats))
        results.append({"rows": rows, "tokens": seq, "context": context, "gqa_us": best["gqa"], "kernel_us": best["kernel"],
                        "speedup": round(best["gqa"] / best["kernel"], 2)})
        print(f"{rows:>5} {seq:>7} {context:>8} {best['gqa']:>10.0f} {best['kernel']:>16.0f} {best['gqa'] / best['kernel']:>7.2f}×", flush=True)
    data = {"threads": args.threads, "heads": args.heads, "kv_heads": args.kv_heads, "head_size": args.head_size, "machine": machine(),
            "cases": results}
    print(f"wrote {write_results('attention_kernel', data, args.json)}")


if __name__ == "__main__":
    main()
