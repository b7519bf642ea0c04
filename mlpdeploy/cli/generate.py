"""`mlpdeploy generate`: stream tokens from an artifact compiled with --kv-cache."""

from __future__ import annotations

from pathlib import Path

import click

from mlpdeploy.cli.app import cli, console, debug_option
from mlpdeploy.cli.options import SPECULATIVE
from mlpdeploy.errors import MlpdeployError


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--prompt", help="Prompt text (the model's tokenizer: bytes for the zoo's language models).")
@click.option("--prompt-ids", help="Prompt as comma-separated token ids, for models without a known tokenizer.")
@click.option("--chat/--no-chat", default=None,
              help="Wrap the prompt in the tokenizer's chat template (default: on when the model has one, as instruct models need).")
@click.option("--system", help="A system message before the prompt (chat template only).")
@click.option("--max-new-tokens", default=64, show_default=True)
@click.option("--temperature", default=0.0, show_default=True, help="0: greedy.")
@click.option("--top-k", default=0, show_default=True, help="Sample among the k most likely tokens (0: all).")
@click.option("--top-p", default=1.0, show_default=True, help="Sample among the most likely tokens whose probability reaches p.")
@click.option("--seed", default=0, show_default=True, help="Seed for sampling.")
@click.option("--stop", "stops", multiple=True, help="Stop at this text (a single token) or token id; repeatable.")
@click.option("--threads", type=int, help="ONNX Runtime intra-op threads (default: the build's setting).")
@SPECULATIVE
@debug_option
def generate(artifact, prompt, prompt_ids, chat, system, max_new_tokens, temperature, top_k, top_p, seed, stops, threads, speculative,
             debug) -> None:
    """Generate text from ARTIFACT (a `compile --kv-cache` directory or its .ort.onnx), streaming tokens."""
    from mlpdeploy.runtime.engine import Engine
    from mlpdeploy.runtime.generate import CachedGenerator, Sampling
    from mlpdeploy.runtime.speculative import make_drafter, parse_mode, session_entries
    from mlpdeploy.runtime.tokenizer import chat_messages, tokenizer_for

    if (prompt is None) == (prompt_ids is None):
        raise MlpdeployError("give exactly one of --prompt TEXT and --prompt-ids 1,2,3")
    if prompt_ids is not None and (chat or system):
        raise MlpdeployError("--chat and --system format text; with --prompt-ids the ids are sent as they are")
    mode = parse_mode(speculative) if speculative else None  # a bad mode fails before anything loads
    sampling = Sampling(temperature, top_k, top_p, seed)
    engine = Engine.load(artifact, threads=threads, session_entries=session_entries(mode))
    generator = CachedGenerator(engine, make_drafter(mode, engine, threads) if mode else None)
    tokenizer = tokenizer_for(engine.manifest, engine.path.parent) if prompt is not None else None
    if tokenizer is not None and chat is None:
        chat = tokenizer.has_chat_template
    if system and not chat:
        raise MlpdeployError("--system needs the chat template (drop --no-chat, or put the instructions in --prompt)")
    if chat and tokenizer is not None and not tokenizer.has_chat_template:
        raise MlpdeployError(f"{engine.manifest.source}'s tokenizer has no chat template; drop --chat to send the prompt as plain text")
    if tokenizer is None:
        ids = _parse_ids(prompt_ids)
    else:
        ids = tokenizer.encode_chat(chat_messages(prompt, system)) if chat else tokenizer.encode(prompt)
    stop_tokens = [_stop_token(s, tokenizer) for s in stops]
    stop_tokens += list(tokenizer.stop_token_ids) if tokenizer is not None else []
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
        console.print(prompt + ("\n" if chat else ""), end="", style="bold", markup=False, highlight=False, soft_wrap=True)
    result = generator.generate([ids], max_new_tokens, sampling, stop_tokens, on_token=show)
    console.print()
    console.print(f"[dim]{_summary(result, len(ids))}[/]")


def _summary(result, prompt_tokens: int) -> str:
    """Tokens, why generation ended, prefill time, decode speed (when a step ran) and overall speed."""
    decode = result.tokens_per_second
    overall = result.overall_tokens_per_second
    parts = [f"{len(result.tokens[0])} tokens ({result.finish[0]})", f"prefill {prompt_tokens} tokens {result.prefill_seconds * 1e3:.1f} ms"]
    parts.append(f"decode {decode:.1f} tokens/s" if decode is not None else "no decode step")
    if overall is not None:
        parts.append(f"{overall:.1f} tokens/s with prefill")
    spec = result.speculative
    if spec is not None:
        rate = f"{spec['acceptance']:.0%} of {spec['drafted']} drafts accepted" if spec["drafted"] else "nothing drafted"
        parts.append(f"{spec['mode']}: {rate}, {spec['rounds']} verify steps")
    return ", ".join(parts)


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
