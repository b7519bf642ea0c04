"""--data on the commands: one option group, the same meaning everywhere; each bad input is one
clear line and exit 2 with nothing written."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from mlpdeploy.cli import cli

NOTES = [json.loads(line)["text"] for line in open("bench/data/mlpdeploy-notes.jsonl", encoding="utf-8")]


def notes(path, count=8, chars=2000):
    path.write_text("".join(json.dumps({"text": t[:chars]}) + "\n" for t in NOTES[:count]), encoding="utf-8")
    return path


def image_folder(path, classes=True):
    Image = pytest.importorskip("PIL.Image", reason="needs the images extra (Pillow)")
    rng = np.random.default_rng(0)
    for i in range(4):
        folder = path / f"class{i % 2}" if classes else path
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return path


def bad_inputs(tmp: "Path"):  # noqa: F821
    (tmp / "empty.txt").write_text("   \n")
    (tmp / "binary.txt").write_bytes(b"ELF\0\1\2binary")
    (tmp / "nothing").mkdir()
    (tmp / "nothing" / "data.csv").write_text("a,b\n1,2\n")
    return {
        "missing": (tmp / "nope.jsonl", "llama-tiny", "does not exist"),
        "empty": (tmp / "empty.txt", "llama-tiny", "is empty"),
        "binary": (tmp / "binary.txt", "llama-tiny", "is binary, not text"),
        "no usable files": (tmp / "nothing", "llama-tiny", "holds no usable files"),
        "images without classes": (image_folder(tmp / "flat", classes=False), "kan-tiny", "holds images but no class folders"),
        "text for an image model": (notes(tmp / "t.jsonl"), "kan-tiny", "is text, but kan-tiny is not a text model"),
        "images for a text model": (image_folder(tmp / "pets"), "llama-tiny", "is an image folder, but llama-tiny is not an image model"),
        "bad jsonl": (tmp / "bad.jsonl", "llama-tiny", 'line 2: not a JSON object with a "text" string'),
        "unsupported suffix": (tmp / "data.csv", "llama-tiny", "unsupported file type .csv"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "no usable files", "images without classes", "text for an image model",
                                  "images for a text model", "bad jsonl", "unsupported suffix"])
def test_bad_data_is_one_line_and_exit_2(case, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n["not", "an", "object"]\n')
    (tmp_path / "data.csv").write_text("a,b\n")
    path, model, message = bad_inputs(tmp_path)[case]
    plan = tmp_path / "plan.json"
    result = CliRunner().invoke(cli, ["analyze", model, "--layer-stats", "--data", str(path), "-o", str(plan)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert not plan.exists()


def test_bad_data_leaves_no_compile_output(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["compile", "llama-tiny", "--data", str(tmp_path / "missing.txt"), "-o", str(out)])
    assert result.exit_code == 2 and "does not exist" in result.output and not out.exists()
    assert not list(tmp_path.iterdir())


def test_a_model_without_a_tokenizer(hf_llama_dir, tmp_path):
    result = CliRunner().invoke(cli, ["analyze", str(hf_llama_dir), "--layer-stats", "--data", str(notes(tmp_path / "n.jsonl")),
                                      "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 2 and "has no tokenizer files" in result.output and not (tmp_path / "p.json").exists()


def test_analyze_plans_on_the_data_with_a_budget(tmp_path):
    """A byte-level zoo LM judged on the user's text: the budget is spent on its perplexity, calibration comes from the data."""
    data = notes(tmp_path / "notes.jsonl")
    plan = tmp_path / "plan.json"
    result = CliRunner().invoke(cli, ["analyze", "llama-tiny", "--redundancy", "--data", str(data), "--seq-len", "64", "--samples", "8",
                                      "--task-samples", "8", "--max-metric-delta", "5%", "-o", str(plan)])
    assert result.exit_code == 0, result.output
    saved = json.loads(plan.read_text())
    assert saved["calibration"]["source"] == f"data:{data}, sha256:{hashlib.sha256(data.read_bytes()).hexdigest()}"  # as sha256sum says
    assert saved["calibration"]["samples"] == 8 and saved["budget"] == {"metric": "perplexity", "max_delta": 0.05, "relative": True}
    assert saved["analyses"]["redundancy"]["planner"]["samples"] == 8 and saved["analyses"]["redundancy"]["planner"]["metric"] == "perplexity"


def test_arrays_define_an_agreement_task(tmp_path):
    from mlpdeploy.model import load_model
    from mlpdeploy.model.tasks import DataOptions, resolve_task
    from mlpdeploy.model.torch_run import first_output_fn

    path = tmp_path / "ids.npz"
    np.savez(path, input_ids=np.random.default_rng(0).integers(0, 256, (10, 16)))
    bundle = load_model("llama-tiny")
    task = resolve_task(bundle, DataOptions(path=path))
    assert task.metric == "agreement" and task.describe()["eval_samples"] == 2 and task.describe()["calibration_samples"] == 8
    run = first_output_fn(bundle.module, ["input_ids"])
    assert task.evaluate(run)["value"] == 1.0
    assert task.evaluate(lambda feed: -run(feed))["value"] < 0.05
    assert sum(len(b["input_ids"]) for b in task.calibration_batches(3, 4)) == 8
    result = CliRunner().invoke(cli, ["analyze", "llama-tiny", "--layer-stats", "--data", str(path), "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "p.json").read_text())["calibration"]["source"].startswith(f"data:{path}, sha256:")


def test_bench_feeds_the_held_out_data(zoo_build, tmp_path):
    """Latency feeds and decode prompts come from the data: the model's tokens, shaped by --seq-len / --context."""
    data = notes(tmp_path / "notes.jsonl")
    out = tmp_path / "latency.json"
    result = CliRunner().invoke(cli, ["bench", str(zoo_build("llama-tiny")), "--data", str(data), "--seq-len", "24", "--batch", "3",
                                      "--iterations", "2", "--min-seconds", "0", "--warmup", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["inputs"].startswith(f"held-out data:{data}, sha256:") and saved["results"][0]["dims"] == {"batch": 3, "seq": 24}
    out = tmp_path / "decode.json"
    result = CliRunner().invoke(cli, ["bench", str(zoo_build("llama-tiny", kv_cache=True)), "--decode", "--data", str(data),
                                      "--context", "16", "--new-tokens", "4", "--repeats", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["inputs"].startswith("held-out data:")
    result = CliRunner().invoke(cli, ["bench", str(zoo_build("llama-tiny")), "--data", str(data), "--dim", "seq=8"])
    assert result.exit_code == 2 and "--dim and --data" in result.output


def test_validate_and_compile_judge_on_the_data(zoo_build, zoo_export, tmp_path):
    data = notes(tmp_path / "notes.jsonl")
    report = tmp_path / "v.json"
    built = zoo_build("llama-tiny")
    result = CliRunner().invoke(cli, ["validate", "--reference", "llama-tiny", "--candidate", str(built), "--data", str(data),
                                      "--seq-len", "32", "--task-samples", "4", "--json", str(report)])
    assert result.exit_code == 0, result.output
    task = json.loads(report.read_text())["task"]
    assert task["task"] == "data:notes.jsonl" and task["metric"] == "perplexity" and task["samples"] == 4 and task["agreement"] == 1.0
    _, onnx_path = zoo_export("llama-tiny")
    result = CliRunner().invoke(cli, ["validate", "--reference", str(onnx_path), "--candidate", str(built), "--data", str(data)])
    assert result.exit_code == 2 and "give a MODEL as --reference" in result.output
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["compile", "llama-tiny", "--data", str(data), "--seq-len", "32", "--task-samples", "4", "-o", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "report.json").read_text())
    assert saved["validation"]["task"]["task"] == "data:notes.jsonl" and "data" in saved["stages"]


def test_data_or_calibration_not_both(tmp_path):
    path = tmp_path / "ids.npz"
    np.savez(path, input_ids=np.zeros((2, 8), np.int64))
    result = CliRunner().invoke(cli, ["analyze", "llama-tiny", "--layer-stats", "--data", str(path), "--calibration", str(path),
                                      "-o", str(tmp_path / "p.json")])
    assert result.exit_code == 2 and "give --data or --calibration, not both" in result.output and not (tmp_path / "p.json").exists()
