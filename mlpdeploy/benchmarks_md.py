"""BENCHMARKS.md: every benchmark result file (bench/results/*.json) rendered as Markdown tables.

Each result file is a JSON object headed by `benchmark`, `date`, `machine` and `versions`
(bench/common.py's `stamp`). The headline benchmarks get tables made for them — `suite` (every
alternative: torch eager, torch.compile, ONNX Runtime on the plain export and with onnxscript's
fusions), `decode` (onnxruntime-genai's builds and loop, torch eager) and `roofline` (the machine's
bandwidth and matmul rate); any other file is rendered generically: its lists and mappings of
records become tables, its scalars one line of settings. Nothing here measures anything.
"""

from __future__ import annotations

import json
from pathlib import Path

HEAD = ("benchmark", "date", "machine", "versions")
MAX_ROWS = 60  # a longer table is cut, with a line saying how many rows the JSON has beyond it
MAX_COLUMNS = 16  # records with more flattened fields are rendered one table per record
MAX_LIST = 8  # longer lists of numbers are per-sample data: counted, not printed

# benchmark → (title, the script that writes it, what it compares); order = order on the page.
TITLES = {
    "roofline": ("Roofline: what this machine can do", "bench/roofline.py",
                 "STREAM-style copy and triad bandwidth and the fp32 matmul rate through torch: the limits a batch-1 decoder "
                 "(bandwidth) and a large batch (compute) run into."),
    "suite": ("Workloads against every alternative", "bench/suite.py",
              "Zoo workloads at batch 1 and 16: torch eager, torch.compile, ONNX Runtime on the plain export and with "
              "onnxscript's ORT fusions, against mlpdeploy's build (default and per pass)."),
    "decode": ("Decoding with a KV cache against onnxruntime-genai", "bench/decode.py",
               "ms per token at each context and prefill ms, batch 1: mlpdeploy's builds in its own loop and in onnxruntime-genai's, "
               "onnxruntime-genai's own builds (its model builder), torch eager with its cache."),
    "decode_prompts": ("Chat prompts: tokens/s with speculative decoding", "bench/decode_prompts.py",
                       "Prompt sets end to end (prefill + decode): mlpdeploy's decoding modes against onnxruntime-genai plain and n-gram."),
    "serve_load": ("Serving under load", "bench/serve_load.py", "`mlpdeploy serve` with concurrent clients: throughput and latency, every answer checked."),
    "attention_kernel": ("CachedAttention against GroupQueryAttention, one node", "bench/attention_kernel.py",
                         "ONNX Runtime's GroupQueryAttention and mlpdeploy's CachedAttention kernel on the same decode rows (a shared "
                         "cache buffer bound through IO binding) and a one-row prefill: µs per node from ONNX Runtime's profiler."),
    "batch_step": ("A decode step against its rows: the ceiling of batching", "bench/batch_step.py",
                   "One decode step of r rows (the scheduler's own step) in one-row steps, r × t(1) / t(r) — the most batching "
                   "gives over one client at that occupancy — and ONNX Runtime's profile of it by operator."),
    "fused_prefill": ("A prompt chunk inside the decode step", "bench/fused_prefill.py",
                      "r decoding rows and a c-token prompt chunk: the rows' step alone, then the chunk as a step of its own "
                      "(`--prefill separate`) against one ragged step of both (`--prefill fused`, CachedAttention's token_rows)."),
    "scheduler_load": ("In-flight batching without HTTP", "bench/scheduler_load.py",
                       "The serving benchmark's chat prompts and closed loop straight on the scheduler, in one process: "
                       "tokens/s, inter-token gaps, the decode step's time and rows per step, every answer checked."),
    "verify_cost": ("What a speculative verify pass costs", "bench/verify_cost.py",
                    "One run over s tokens of one sequence against a one-token step, per build (MatMulNBits, and --ort-kernels' "
                    "MatMulInt4 / MatMulInt8): what the adaptive draft length weighs acceptance against."),
    "quant": ("Low-bit weights", "bench/quant.py", "Perplexity per weight format, FP4 forms on ONNX Runtime, int4 decode against onnxruntime-genai."),
    "quant_real": ("int4 against ONNX Runtime's quantizer", "bench/quant_real.py",
                   "mlpdeploy's int4 against ONNX Runtime's MatMulNBitsQuantizer on real models and held-out text."),
    "int8_rule": ("int8 activations: the relative RMS rule", "bench/int8_rule.py",
                  "Correct MatMulNBits builds at accuracy level 4 against planted faults (one down_proj's scales × factor): "
                  "each output's relative RMS error, the elementwise share, the task metric."),
    "ort_vs_torch": ("ONNX Runtime build against torch eager", "bench/ort_vs_torch.py", "The zoo's tiny models, one run."),
    "ort_opt_level": ("ONNX Runtime optimization level", "bench/ort_opt_level.py", "`--opt-level extended` against `all`, with and without fusions."),
    "gated_mlp_cpu": ("fuse-gated-mlp on the CPU", "bench/gated_mlp_cpu.py", "A LLaMA MLP stack, unfused against fused, ONNX Runtime CPU."),
    "kan_ops": ("KAN ops on the CPU", "bench/kan_ops.py", "GroupRational: compiled kernel, function body, plain export, torch eager."),
    "sparse_mlp": ("Contextual sparsity on the CPU", "bench/sparse_mlp.py", "SparseMLP (kernel and standard-op body) against the dense MLP."),
    "drop_layers": ("Dropping layers", "bench/drop_layers.py", "Perplexity and decode speed after drop-layers."),
    "compile_memory": ("Compile memory per stage", "bench/compile_memory.py", "Peak RSS of each compile stage against the weight bytes."),
    "gated_mlp_kernel": ("GPU: GatedMLP Triton kernel", "bench/gated_mlp_kernel.py", "Fused gate-up kernel against torch and cuBLAS."),
    "kan_kernels_gpu": ("GPU: KAN Triton kernels", "bench/kan_kernels_gpu.py", "GroupRational bandwidth, BSplineKAN and FANLayer against torch."),
    "sparse_mlp_gpu": ("GPU: SparseMLP gather-GEMMs", "bench/sparse_mlp_gpu.py", "Triton gather-GEMMs against dense cuBLAS."),
    "w4a16_kernel": ("GPU: W4A16MatMul Triton kernel", "bench/w4a16_kernel.py", "4-bit codes decoded in the GEMM against dequantize-then-matmul and dense fp16."),
}


def load_results(directory: Path) -> dict[str, dict]:
    """Every result file under `directory` (recursively, hidden and temporary folders skipped): relative path → data."""
    found = {}
    for path in sorted(directory.rglob("*.json")):
        relative = path.relative_to(directory)
        if any(part.startswith((".", "tmp")) for part in relative.parts[:-1]):
            continue
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            found[relative.as_posix()] = data
    return found


def render_benchmarks(results: dict[str, dict], source: str = "bench/results") -> str:
    """BENCHMARKS.md for `results` (file name under `source` → its data)."""
    lines = ["# Benchmarks", "",
             f"Generated by `make bench` from the result files in `{source}/` (`python bench/benchmarks_md.py`; "
             "`make docs` re-renders it without measuring). Do not edit by hand: rerun the benchmark. Ratios are "
             "measured side by side in one run of one script; compare absolute times only within a file.", ""]
    if not results:
        return "\n".join(lines + ["No results committed yet: run `make bench`.", ""])
    lines += ["## Runs", "", *_table(["file", "benchmark", "date", "machine", "versions"],
                                      [[f"`{name}`", data.get("benchmark", Path(name).stem), data.get("date", "undated"),
                                        _machine(data.get("machine")), _versions(data.get("versions"))]
                                       for name, data in _ordered(results)]), ""]
    for name, data in _ordered(results):
        benchmark = data.get("benchmark", Path(name).stem)
        title, script, what = TITLES.get(_family(benchmark), (benchmark, None, ""))
        lines += [f"## {title}", ""]
        origin = f"Written by `{script}` to" if script else "From"
        lines += [" ".join(p for p in [what, f"{origin} `{source}/{name}`, {data.get('date', 'undated')}."] if p), ""]
        renderer = RENDERERS.get(_family(benchmark))
        body = None
        if renderer is not None:
            try:
                body = renderer(data)
            except (KeyError, TypeError, ValueError, AttributeError, ZeroDivisionError):
                body = None  # an older or newer layout than the renderer knows: fall back to the generic tables
        if body is None:
            body = _generic({k: v for k, v in data.items() if k not in HEAD}, [])
        lines += body
    return "\n".join(lines).rstrip() + "\n"


def _family(benchmark: str) -> str:
    """`validation_rules-smollm2` → `validation_rules`: files of one script share a title."""
    return benchmark.split("-", 1)[0]


def _ordered(results: dict[str, dict]) -> list[tuple[str, dict]]:
    order = list(TITLES)

    def key(item):
        family = _family(item[1].get("benchmark", Path(item[0]).stem))
        return (order.index(family) if family in order else len(order), item[0])

    return sorted(results.items(), key=key)


def _machine(machine) -> str:
    if not isinstance(machine, dict):
        return "–"
    parts = [str(machine[k]) for k in ("cpu", "gpu", "device") if machine.get(k)]
    if machine.get("cores"):
        parts.append(f"{machine['cores']} cores")
    threads = machine.get("threads") or machine.get("ort_intra_op_threads") or machine.get("torch_threads")
    if threads:
        parts.append(f"{threads} threads")
    if machine.get("load_average"):
        parts.append(f"load {machine['load_average'][0]}")
    return ", ".join(parts) or "–"


def _versions(versions) -> str:
    if not isinstance(versions, dict):
        return "–"
    return ", ".join(f"{k} {v}" for k, v in versions.items())


# --- cells and tables -------------------------------------------------------------------------------


def _num(x: float) -> str:
    if x != x or x in (float("inf"), float("-inf")):
        return str(x)
    if x == 0 or x == int(x) and abs(x) < 1e15:
        return f"{int(x):,}" if abs(x) >= 1e4 else str(int(x))
    if abs(x) >= 1e4:
        return f"{x:,.0f}"
    if abs(x) < 1e-3:
        return f"{x:.2e}"
    return f"{x:.4g}"


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 1e4 else str(value)
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, list):
        if len(value) > MAX_LIST and all(isinstance(v, int | float) for v in value):
            return f"{len(value)} values"
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows[:MAX_ROWS]:
        out.append("| " + " | ".join(c if isinstance(c, str) else _cell(c) for c in row) + " |")
    if len(rows) > MAX_ROWS:
        out.append(f"\n({len(rows) - MAX_ROWS} more rows in the JSON.)")
    return out


def _scalar(value) -> bool:
    return value is None or isinstance(value, str | int | float | bool) or (
        isinstance(value, list) and all(v is None or isinstance(v, str | int | float | bool) for v in value))


def _flatten(record: dict, prefix: str = "", depth: int = 2) -> dict | None:
    """A record's fields with nested mappings joined into `a b` names, or None when it holds lists of records."""
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if _scalar(value):
            flat[name] = value
        elif isinstance(value, dict) and depth > 1:
            inner = _flatten(value, f"{name} ", depth - 1)
            if inner is None:
                return None
            flat.update(inner)
        else:
            return None
    return flat


def _per_sample(value) -> bool:
    return isinstance(value, list) and len(value) > MAX_LIST


def _records_table(records: list[tuple[str | None, dict]], key_name: str) -> list[str] | None:
    """One table for records of scalar fields (nested mappings flattened); fields equal in every row go to
    a line above it, per-sample lists are left out. None when the records do not fit one table."""
    flats = [(k, _flatten(r)) for k, r in records]
    if any(f is None for _, f in flats):
        return None
    columns = [c for c in dict.fromkeys(c for _, f in flats for c in f) if not any(_per_sample(f.get(c)) for _, f in flats)]
    shared = {}
    if len(flats) > 1:
        shared = {c: flats[0][1].get(c) for c in columns if all(c in f and f[c] == flats[0][1][c] for _, f in flats)}
        columns = [c for c in columns if c not in shared]
    if len(columns) > MAX_COLUMNS or not columns:
        return None
    keyed = any(k is not None for k, _ in flats)
    header = ([key_name] if keyed else []) + columns
    rows = [([k] if keyed else []) + [_cell(f.get(c)) for c in columns] for k, f in flats]
    above = ["Every row: " + " · ".join(f"{k} {_cell(v)}" for k, v in shared.items()) + ".", ""] if shared else []
    return above + _table(header, rows)


def _generic(value, path: list[str]) -> list[str]:
    """Tables for any JSON value: mappings and lists of records become tables, scalars a settings line."""
    label = " › ".join(path)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        table = _records_table([(None, v) for v in value], "")
        if table is not None:
            return ([f"**{label}**", ""] if label else []) + table + [""]
        return [line for i, v in enumerate(value) for line in _generic(v, [*path, str(i)])]
    if not isinstance(value, dict):
        return [f"**{label}**: {_cell(value)}" if label else _cell(value), ""]
    scalars = {k: v for k, v in value.items() if _scalar(v)}
    nested = {k: v for k, v in value.items() if not _scalar(v)}
    out = []
    if len(nested) > 1 and not scalars and all(isinstance(v, dict) for v in nested.values()):
        table = _records_table(list(nested.items()), path[-1] if path else "")
        if table is not None:
            return ([f"**{label}**", ""] if label else []) + table + [""]
    if scalars:
        long_text = any(isinstance(v, str) and " " in v for v in scalars.values())
        if long_text:
            out += ([f"**{label}**", ""] if label else []) + [f"- {k}: {_cell(v)}" for k, v in scalars.items()] + [""]
        else:
            out += [(f"**{label}**: " if label else "") + " · ".join(f"{k} {_cell(v)}" for k, v in scalars.items()), ""]
    for key, inner in nested.items():
        out += _generic(inner, [*path, key])
    return out


# --- the headline benchmarks --------------------------------------------------------------------------


def _roofline_line(roofline: dict | None) -> list[str]:
    if not roofline:
        return []
    return [f"Roofline in the same run: copy {_num(roofline['copy_gb_s'])} GB/s, triad {_num(roofline['triad_gb_s'])} GB/s, "
            f"fp32 matmul {_num(roofline['matmul_gflop_s'])} GFLOP/s ({roofline.get('threads', '?')} threads).", ""]


def _roofline(data: dict) -> list[str]:
    return _table(["threads", "array MiB", "copy GB/s", "triad GB/s", "fp32 matmul GFLOP/s"],
                  [[data["threads"], data["array_mib"], data["copy_gb_s"], data["triad_gb_s"], data["matmul_gflop_s"]]]) + [""]


def _suite(data: dict) -> list[str]:
    out = _roofline_line(data.get("roofline"))
    out += [f"{data.get('threads', '?')} threads. ms = median over clean samples; **× best alternative** = the fastest "
            "non-mlpdeploy variant's ms over this row's (> 1: mlpdeploy ahead); bandwidth = model bytes per batch-1 run "
            "over the triad bandwidth.", ""]
    rows = []
    for r in data["rows"]:
        ours = r["variant"].startswith("mlpdeploy")
        ratio = f"{_num(r['vs_best'])}× vs {r['best_alternative']}" if ours else f"{_num(r['vs_best'])}×"
        bandwidth = f"{r['bandwidth']:.0%}" if r.get("bandwidth") is not None else "–"
        rows.append([r["workload"], r["batch"], f"**{r['variant']}**" if ours else r["variant"], r["p50_ms"], r["p90_ms"],
                     ratio, r["mib"], r.get("peak_mib"), bandwidth, r.get("quality") or "–"])
    out += _table(["workload", "batch", "variant", "p50 ms", "p90 ms", "× best alternative", "model MiB", "peak MiB",
                   "bandwidth", "quality"], rows) + [""]
    notes = [f"- {workload}: {label}: {note}" for workload, result in data.get("results", {}).items()
             for label, note in (result.get("notes") or {}).items()]
    return out + (["Notes:", "", *notes, ""] if notes else [])


def _decode(data: dict) -> list[str]:
    results = data["results"]
    keys = list(results)
    variants = list(dict.fromkeys(v for per in results.values() for v in per))

    def phase(key: str) -> str:
        return "prefill" if key.startswith("prefill") else "decode"

    model_key = "anchor" if "anchor" in data else "model"
    settings = data.get(model_key) or {}
    out = _roofline_line(data.get("roofline"))
    if settings:
        out += [("Model: " + (" · ".join(f"{k} {_cell(v)}" for k, v in settings.items()) if isinstance(settings, dict) else _cell(settings))) + ".", ""]
    out += ["p50 ms (decode: per token at that context; prefill: the whole prompt), median over clean samples [clean/all].", ""]
    rows = []
    for name in variants:
        cells = []
        for key in keys:
            stat = results[key].get(name, {}).get(phase(key))
            cells.append(f"{_num(stat['p50_ms'])} [{stat['clean']}/{stat['samples']}]" if stat else "–")
        rows.append([f"**{name}**" if name.startswith("mlpdeploy") else name, *cells])
    out += _table(["variant", *keys], rows) + [""]
    others = [v for v in variants if not v.startswith("mlpdeploy")]
    if others:
        ratio_rows = []
        for name in (v for v in variants if v.startswith("mlpdeploy")):
            cells = []
            for key in keys:
                times = {v: results[key][v][phase(key)]["p50_ms"] for v in others if v in results[key]}
                ours = results[key].get(name, {}).get(phase(key))
                if not times or not ours:
                    cells.append("–")
                    continue
                best = min(times, key=times.get)
                cells.append(f"{_num(times[best] / ours['p50_ms'])}× vs {best}")
            ratio_rows.append([name, *cells])
        out += ["Best alternative's time over each mlpdeploy variant's (> 1: mlpdeploy ahead):", ""]
        out += _table(["variant", *keys], ratio_rows) + [""]
    fractions = data.get("bandwidth_fraction") or {}
    if fractions:
        contexts = list(dict.fromkeys(c for per in fractions.values() for c in per))
        out += ["Fraction of the triad bandwidth per decode step ((weights + KV cache read) / ms per token):", ""]
        out += _table(["variant", *(f"context {c}" for c in contexts)],
                      [[name, *(f"{per[c]:.0%}" if c in per else "–" for c in contexts)] for name, per in fractions.items()]) + [""]
    rest = {k: v for k, v in data.items() if k not in (*HEAD, "results", "roofline", model_key, "bandwidth_fraction")}
    return out + _generic(rest, [])


def _int8_rule(data: dict) -> list[str]:
    """One row per build and candidate: the worst output's relative RMS error (the rule allows 0.1), the
    elementwise rule's share, and the task metric against the unquantized model."""
    rows = []
    for spec, build in data["builds"].items():
        for name, c in build["candidates"].items():
            worst, task = c["worst"], c["task"]
            rows.append([f"`{spec}`", name, f"{worst['rel_rms']['value']:.3f} ({worst['rel_rms']['output']})",
                         f"{100 * worst['elementwise']['value']:,.0f}%", f"{100 * task['relative_delta']:+.2f}%", f"{100 * task['agreement']:.1f}%"])
    return [f"model `{data['model']}` · data `{data['data']}`", "",
            *_table(["build", "candidate", "worst relative RMS error", "elementwise share", "perplexity Δ", "top-1"], rows), ""]


RENDERERS = {"roofline": _roofline, "suite": _suite, "decode": _decode, "int8_rule": _int8_rule}
