"""`mlpdeploy generate`: stream tokens from an artifact compiled with --kv-cache."""

from __future__ import annotations

from pathlib import Path

import click

from mlpdeploy.cli.app import cli, console, debug_option
from mlpdeploy.errors import MlpdeployError


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--prompt", help="Prompt text (the model's tokenizer: bytes for the zoo's language models).")
@click.option("--prompt-ids", help="Prompt as comma-separated token ids, for models without a known tokenizer.")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0: greedy.")
@click.option("--top-k", default=0, show_default=True, help="Sample among the k most likely tokens (0: all).")
@click.option("--top-p", default=1.0, show_default=True, help="Sample among the most likely tokens whose probability reaches p.")
@click.option("--seed", default=0, show_default=True, help="Seed for sampling.")
@click.option("--stop", "stops", multiple=True, help="Stop at this text (a single token) or token id; repeatable.")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: the build's setting).")
@debug_option
def generate(artifact, prompt, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, stops, threads, debug) -> None:
    """Generate text from ARTIFACT (a `compile --kv-cache` directory or its .ort.onnx), streaming tokens."""
    from mlpdeploy.runtime.engine import Engine
    from mlpdeploy.runtime.generate import CachedGenerator, Sampling
    from mlpdeploy.runtime.tokenizer import tokenizer_for

    if (prompt is None) == (prompt_ids is None):
        raise MlpdeployError("give exactly one of --prompt TEXT and --prompt-ids 1,2,3")
    engine = Engine.load(artifact, threads=threads)
    generator = CachedGenerator(engine)
    tokenizer = tokenizer_for(engine.manifest) if prompt is not None else None
    ids = tokenizer.encode(prompt) if tokenizer else _parse_ids(prompt_ids)
    stop_tokens = [_stop_token(s, tokenizer) for s in stops]
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        stop_tokens.append(tokenizer.eos_token_id)
    streamed: list[int] = []

    def show(_row: int, token: int) -> None:
        streamed.append(token)
        if tokenizer is None:
            console.print(f"{token} ", end="", markup=False, highlight=False)
            return
        text = tokenizer.decode(streamed)
        if not text.endswith("\ufffd"):  # a multi-byte character is complete
            console.print(text, end="", markup=False, highlight=False, soft_wrap=True)
            streamed.clear()

    if tokenizer is not None:
        console.print(prompt, end="", style="bold", markup=False, highlight=False, soft_wrap=True)
    result = generator.generate([ids], max_new_tokens, Sampling(temperature, top_k, top_p, seed), stop_tokens, on_token=show)
    console.print()
    console.print(
        f"[dim]{len(result.tokens[0])} tokens ({result.finish[0]}), prefill {len(ids)} tokens {result.prefill_seconds * 1e3:.1f} ms, "
        f"decode {result.tokens_per_second:.1f} tokens/s[/]"
    )


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise MlpdeployError(f"--prompt-ids {text!r} must be comma-separated integers, e.g. 1,15,42") from None


def _stop_token(text: str, tokenizer) -> int:
    if text.isdigit() and tokenizer is None:
        return int(text)
    ids = tokenizer.encode(text) if tokenizer is not None else []
    if len(ids) != 1:
        raise MlpdeployError(f"--stop {text!r} is not a single token; give one token's text or (with --prompt-ids) its id")
    return ids[0]
