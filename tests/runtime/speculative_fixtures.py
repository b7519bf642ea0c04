"""Artifacts for the speculative-decoding tests: a drop-layers plan written the way `analyze`
writes one, and a copy of a built decoder with draft-head outputs added (the contract of
docs/decoding.md), so the heads mode runs on a real graph before trained heads exist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def drop_plan(path: Path, model: str, sites: list[str]) -> Path:
    """A plan.json for `model` whose one pass drops `sites` (blocks `layers.3` or sublayers `layers.2.self_attn`)."""
    plan = {"mlpdeploy_plan": 1, "model": model, "created_with": {}, "calibration": {"source": "test"},
            "passes": [{"name": "drop-layers", "options": {}, "sites": {s: {} for s in sites}}]}
    path.write_text(json.dumps(plan))
    return path


def with_draft_heads(compiled: Path, out: Path, slice_ids: np.ndarray | None = None) -> Path:
    """A copy of the compile directory `compiled` whose built model also outputs two heads over
    the tokens `slice_ids` (default: the whole vocabulary; else listed in the manifest's
    draft_heads.token_ids): draft_logits.0 scores each token by the model's own logits for it (a
    head guessing the token after next repeats the next one), draft_logits.1 by the logits of
    the next token id (a head that is mostly wrong)."""
    shutil.copytree(compiled, out, ignore=shutil.ignore_patterns("model.onnx*", "model.opt.onnx*", "report.html"))  # the built model only
    model_path = out / "model.ort.onnx"
    model = onnx.load(str(model_path))
    graph = model.graph
    vocab = next(o for o in graph.output if o.name == "logits").type.tensor_type.shape.dim[2].dim_value
    ids = np.arange(vocab) if slice_ids is None else np.asarray(slice_ids, np.int64)
    for j, source in enumerate((ids, (ids + 1) % vocab)):
        graph.initializer.append(numpy_helper.from_array(source.astype(np.int64), f"test_head_{j}_ids"))
        graph.node.append(helper.make_node("Gather", ["logits", f"test_head_{j}_ids"], [f"draft_logits.{j}"], axis=2))
        graph.output.append(helper.make_tensor_value_info(f"draft_logits.{j}", onnx.TensorProto.FLOAT, ["batch", "seq", len(ids)]))
    onnx.save(model, str(model_path))
    manifest_path = out / "model.ort.manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["outputs"] += [{"name": f"draft_logits.{j}", "dtype": "float32", "shape": ["batch", "seq", len(ids)]} for j in range(2)]
    manifest["draft_heads"] = {"heads": 2, "token_ids": None if slice_ids is None else [int(i) for i in ids]}
    manifest_path.write_text(json.dumps(manifest))
    return out
