"""What one decode step costs against the rows it runs: the ceiling of in-flight batching.

    python bench/batch_step.py --artifact DIR [--rows 1,2,4,8,16] [--past 64] [--steps 40]
        [--rounds 3] [--threads 2] [--json PATH]

`--artifact` is a `compile --kv-cache` directory (onnxruntime backend, per-row cache lengths: what
`serve` batches). For each row count r the scheduler's step is timed as it runs it: r rows of
their own lengths (`--past` plus 0–6 tokens) each fed one token through `runtime.step.Stepper`,
the session made as `serve` makes it (`session.force_spinning_stop`); row counts take turns,
`--rounds` times, a pause before each. Reported per r: the step's median ms, its cost in
one-row steps, and r × t(1) / t(r) — the most batching can give at that occupancy (tokens/s over
one client's, before any prefill) — then ONNX Runtime's profile of the same step by operator
(MatMulNBits, GroupQueryAttention, the rest), each as ms and × its one-row time. Last, one
MatMulNBits node alone (int4, block 32, accuracy level 4, the build's format; K × N of
`--matmul`, SmolLM2's gate_up by default, weights in cache) timed at M = each row count: what
each further row costs the kernel once its weights are read.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, settle, write_results  # noqa: E402

SPREAD = 7  # rows hold past + 0..SPREAD-1 tokens: different lengths, as in serving
NAMED_OPS = ("MatMulNBits", "MatMulInt4", "MatMulInt8", "GroupQueryAttention", "CachedAttention")


def step_state(stepper, rows: int, past: int, steps: int):
    """A row-lengths state of `rows` rows, row i holding past + i % SPREAD tokens, room for `steps` more."""
    lengths = past + np.arange(rows) % SPREAD
    return stepper.rows_state(stepper.cache_buffers(rows, past + SPREAD + steps + 4), lengths)


def time_steps(stepper, rows: int, past: int, steps: int) -> list[float]:
    """Seconds of each of `steps` one-token steps over `rows` rows (after 3 untimed ones)."""
    state = step_state(stepper, rows, past, steps + 3)
    ids = np.full((rows, 1), 100, np.int64)
    times = []
    for index in range(steps + 3):
        start = time.perf_counter()
        stepper.step(state, ids)
        if index >= 3:
            times.append(time.perf_counter() - start)
    return times


def profile_ops(artifact: Path, threads: int, rows: int, past: int, steps: int) -> dict[str, float]:
    """ONNX Runtime's kernel time per step by operator (ms) for a `rows`-row step, from a profiled session."""
    import onnxruntime as ort

    from mlpdeploy.backends.onnxruntime.runner import OrtRunner
    from mlpdeploy.backends.onnxruntime.session import saved_session_config
    from mlpdeploy.plugins.ort.library import register
    from mlpdeploy.runtime.engine import Engine, find_manifest, resolve_artifact
    from mlpdeploy.runtime.step import Stepper

    model = resolve_artifact(artifact)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.enable_profiling, options.log_severity_level = threads, True, 3
    options.profile_file_prefix = f"batch_step_{os.getpid()}_{rows}"
    for library in saved_session_config(model).get("custom_ops_libraries", []):  # --ort-kernels: e.g. MatMulInt4
        register(options, model.parent / library)
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    engine = Engine(model, find_manifest(model), OrtRunner(session), "onnxruntime")
    time_steps(Stepper(engine), rows, past, steps)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    # the timed steps only: the 3 warm-up runs before them include one-time work (mlpdeploy's kernels repack
    # their weights on first use; ONNX Runtime's MatMulNBits prepacks when the session is made)
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    first_timed = starts[-steps] if len(starts) >= steps else 0
    kernel = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first_timed:
            op = event["args"]["op_name"]
            kernel[op if op in NAMED_OPS else "other"] += event["dur"]
    return {op: kernel[op] / steps / 1e3 for op in (*NAMED_OPS, "other")}


def matmul_rows(k: int, n: int, rows_list: list[int], threads: int, repeats: int = 300) -> dict[int, float]:
    """µs of one MatMulNBits node (int4, block 32, accuracy level 4) [M, k] x [k, n] at M = each of `rows_list`."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    weight = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32) * 0.05
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])], [onnx.numpy_helper.from_array(weight, "w")])
    quantizer = MatMulNBitsQuantizer(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), block_size=32,
                                     is_symmetric=False, accuracy_level=4)
    quantizer.process()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = threads, 3
    session = ort.InferenceSession(quantizer.model.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    times: dict[int, list[float]] = {m: [] for m in rows_list}
    for round_index in range(3):
        for m in rows_list if round_index % 2 == 0 else rows_list[::-1]:
            x = np.random.default_rng(m).standard_normal((m, k)).astype(np.float32)
            for _ in range(20):
                session.run(None, {"x": x})
            start = time.perf_counter()
            for _ in range(repeats):
                session.run(None, {"x": x})
            times[m].append((time.perf_counter() - start) / repeats * 1e6)
    return {m: statistics.median(t) for m, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", required=True, type=Path, help="a `compile --kv-cache` directory (onnxruntime backend)")
    parser.add_argument("--rows", default="1,2,4,8,16")
    parser.add_argument("--past", type=int, default=64, help="cache tokens per row before the timed steps (a chat prompt and some answer)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--matmul", default="576x3072", help="K x N of the lone MatMulNBits node timed at M = each row count")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows_list = [int(r) for r in args.rows.split(",")]
    if 1 not in rows_list:
        rows_list.insert(0, 1)

    from mlpdeploy.runtime.engine import IDLE_BETWEEN_RUNS, Engine
    from mlpdeploy.runtime.step import Stepper

    stepper = Stepper(Engine.load(args.artifact, threads=args.threads, session_entries=IDLE_BETWEEN_RUNS))
    times: dict[int, list[float]] = {r: [] for r in rows_list}
    for round_index in range(args.rounds):
        for rows in rows_list if round_index % 2 == 0 else rows_list[::-1]:
            settle()
            times[rows] += time_steps(stepper, rows, args.past, args.steps)
    step_ms = {r: statistics.median(t) * 1e3 for r, t in times.items()}
    ops = {}
    for rows in rows_list:
        settle()
        ops[rows] = profile_ops(args.artifact, args.threads, rows, args.past, args.steps)

    one = step_ms[1]
    levels = {}
    print(f"{args.artifact}: one decode step of r rows (past {args.past}+, {args.threads} threads), median of "
          f"{args.rounds} × {args.steps} steps")
    print(f"{'rows':>5} {'step ms':>8} {'× 1 row':>8} {'ceiling':>8}   " + "   ".join(f"{op} ms (× 1 row)" for op in (*NAMED_OPS, "other")))
    for rows in rows_list:
        levels[rows] = {"step_ms": round(step_ms[rows], 3), "vs_one_row": round(step_ms[rows] / one, 3),
                        "ceiling_vs_one_client": round(rows * one / step_ms[rows], 3),
                        "ops_ms": {op: round(ms, 3) for op, ms in ops[rows].items()},
                        "ops_vs_one_row": {op: round(ms / ops[1][op], 3) if ops[1][op] else None for op, ms in ops[rows].items()}}
        row = levels[rows]
        print(f"{rows:>5} {row['step_ms']:>8.2f} {row['vs_one_row']:>7.2f}× {row['ceiling_vs_one_client']:>7.2f}×   "
              + "   ".join(f"{row['ops_ms'][op]:.2f} ({row['ops_vs_one_row'][op] or 0:.2f}×)" for op in (*NAMED_OPS, "other")))
    k, n = (int(v) for v in args.matmul.lower().split("x"))
    lone = matmul_rows(k, n, rows_list, args.threads)
    print(f"one MatMulNBits node, K {k} x N {n}, weights in cache: " + ", ".join(f"M={m} {us:.1f} µs" for m, us in lone.items()))
    print(f"machine: {machine()}")
    data = {"artifact": str(args.artifact), "past": args.past, "steps": args.steps, "rounds": args.rounds, "threads": args.threads,
            "machine": machine(), "levels": levels,
            "lone_matmulnbits": {"k": k, "n": n, "us": {m: round(us, 1) for m, us in lone.items()},
                                 "vs_m1": {m: round(us / lone[rows_list[0]], 2) for m, us in lone.items()}}}
    print(f"wrote {write_results('batch_step', data, args.json)}")


if __name__ == "__main__":
    main()
