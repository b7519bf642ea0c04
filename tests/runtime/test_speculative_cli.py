"""`--speculative` on generate, bench --decode --prompts and serve: same text as without, one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mlpdeploy.cli import cli
from mlpdeploy.runtime.engine import Engine
from mlpdeploy.runtime.generate import CachedGenerator

PROMPTS = ['{"prompt": "def area(width, height):\\n    return width * height\\n\\ndef volume(width, height, depth):\\n    return "}',
           '{"prompt": "import os\\nimport sys\\nimport "}']


@pytest.fixture(scope="module")
def llama_small(zoo_build):
    return zoo_build("llama-small", kv_cache=True)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def test_generate(llama_small):
    args = ["generate", str(llama_small), "--prompt", "import os\nimport sys\nimport ", "--max-new-tokens", "30"]
    plain = CliRunner().invoke(cli, args)
    spec = CliRunner().invoke(cli, [*args, "--speculative", "ngram"])
    assert plain.exit_code == 0 and spec.exit_code == 0, spec.output
    assert spec.output.split("\n30 tokens")[0] == plain.output.split("\n30 tokens")[0]
    assert "ngram:n=3,k=8:" in spec.output and "drafts accepted" in spec.output.replace("\n", " ")


@pytest.mark.parametrize("mode, message", [
    ("beam", "unknown --speculative mode 'beam'; choose ngram[:n=3,k=8], heads[:k=N], self:PLAN or draft:ARTIFACT"),
    ("ngram:k=0", "--speculative 'ngram:k=0': k=0 is out of range (1 to 64)"),
    ("heads", "has no draft heads (outputs draft_logits.0 …)"),
    ("draft:/nonexistent", "artifact /nonexistent does not exist"),
])
def test_bad_modes_are_one_line_and_exit_2(llama_small, mode, message):
    result = CliRunner().invoke(cli, ["generate", str(llama_small), "--prompt", "x", "--speculative", mode])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bench_prompts(llama_small, prompts, tmp_path):
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["bench", str(llama_small), "--decode", "--prompts", str(prompts), "--new-tokens", "24",
                                      "--speculative", "ngram", "--check-plain", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["mode"] == "decode-prompts" and data["speculative"] == "ngram" and data["prompts"]["chat"] is False
    generator = CachedGenerator(Engine.load(llama_small))
    for row, line in zip(data["results"], PROMPTS):
        prompt = list(json.loads(line)["prompt"].encode())
        assert row["output_ids"] == generator.generate([prompt], 24).tokens[0] and row["prompt_tokens"] == len(prompt)
        assert row["prefill_ms"] > 0 and row["decode_ms"] > 0 and row["wall_ms"] >= row["prefill_ms"] + row["decode_ms"] * 0.99
        assert row["tokens_per_second"] == pytest.approx(len(row["output_ids"]) / row["wall_ms"] * 1e3)
        assert row["speculative"]["mode"] == "ngram:n=3,k=8" and row["plain"]["same"]
    total = data["aggregate"]
    assert total["prompts"] == 2 and total["generated_tokens"] == 48 and total["same_as_plain"] == 2
    assert total["speculative"]["drafted"] == sum(r["speculative"]["drafted"] for r in data["results"])
    assert total["tokens_per_second"] == pytest.approx(48 / sum(r["wall_ms"] for r in data["results"]) * 1e3)


def test_bench_prompts_errors(llama_small, prompts, tmp_path):
    def run(*args):
        return CliRunner().invoke(cli, ["bench", str(llama_small), *args])

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    out = tmp_path / "r.json"
    cases = [
        (run("--prompts", str(prompts)), "time generation: add --decode"),
        (run("--decode", "--speculative", "ngram"), "add --prompts FILE.jsonl"),
        (run("--decode", "--prompts", str(tmp_path / "none.jsonl"), "--json", str(out)), "does not exist"),
        (run("--decode", "--prompts", str(bad), "--json", str(out)), "bad.jsonl:2: each line must be an object with a non-empty string \"prompt\""),
        (run("--decode", "--prompts", str(prompts), "--chat", "--json", str(out)), "has no chat template; use --no-chat"),
        (run("--decode", "--prompts", str(prompts), "--check-plain", "--json", str(out)), "--check-plain compares a --speculative run"),
        (run("--decode", "--prompts", str(prompts), "--speculative", "ngram:z=1", "--json", str(out)), "unknown option 'z'"),
    ]
    for result, message in cases:
        assert result.exit_code == 2 and message in result.output, result.output
    assert not out.exists()


def test_serve_generates_speculatively(llama_small):
    pytest.importorskip("uvicorn", reason="needs the serve extra")
    import http.client

    from mlpdeploy.serving.server import Server

    plain = CachedGenerator(Engine.load(llama_small)).generate([list(b"import os\nimport sys\nimport ")], 20).tokens[0]
    with Server([llama_small], port=0, speculative="ngram:k=4") as server:
        name = next(iter(server.models))
        assert server.models[name].generator.drafter.describe() == "ngram:n=3,k=4"
        conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        body = {"text_input": "import os\nimport sys\nimport ", "parameters": {"max_tokens": 20}}
        conn.request("POST", f"/v2/models/{name}/generate", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        reply = json.loads(conn.getresponse().read())
        assert reply["output_ids"] == plain


def test_serve_bad_mode():
    result = CliRunner().invoke(cli, ["serve", "nothing", "--speculative", "beam"])
    assert result.exit_code == 2 and "unknown --speculative mode 'beam'" in result.output
