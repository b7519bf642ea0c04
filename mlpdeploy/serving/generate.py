"""Triton's generate extension over the runtime's generate loop (`CachedGenerator`).

Request (`POST .../generate` or `.../generate_stream`): `{"id"?, "text_input": str | "input_ids":
[int] | "messages": [{"role", "content"}], "parameters"?: {...}}` (`messages`: chat turns, formatted
with the tokenizer's chat template and ended with the assistant's turn; `text_input` is sent as it is); parameters (also accepted at the top level, as Triton passes extra
fields on): `max_tokens` (default 16), `temperature` (0: greedy), `top_k`, `top_p`, `seed`,
`stop` (a list of token texts or ids). `text_input` needs the model's tokenizer (the zoo's byte
models, or a Hugging Face directory's).

Response: `{"id"?, "model_name", "model_version", "text_output", "output_ids", "finish_reason"}`;
`generate_stream` sends one server-sent event per token (`text_output` the new text, held back
while a multi-byte character is incomplete) and a last one with `finish_reason`.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.serving.models import VERSION, ServedModel
from mlpdeploy.serving.protocol import RequestError

PARAMETERS = {"max_tokens", "temperature", "top_k", "top_p", "seed", "stop"}


@dataclass
class GenerateRequest:
    id: str | None
    prompt: list[int]
    max_tokens: int
    sampling: object  # mlpdeploy.runtime.generate.Sampling
    stop_tokens: list[int]


def parse_generate_request(body: bytes, model: ServedModel) -> GenerateRequest:
    from mlpdeploy.runtime.generate import Sampling

    if model.generator is None:
        raise RequestError(400, f"model '{model.name}' has no KV cache; generate needs a decoder compiled with --kv-cache (use /infer)")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(400, f"malformed generate request JSON: {exc}") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("parameters") or {}, dict):
        raise RequestError(400, "the generate request must be a JSON object (with an optional 'parameters' object)")
    params = {k: v for k, v in payload.items() if k in PARAMETERS} | (payload.get("parameters") or {})
    unknown = sorted(set(params) - PARAMETERS - {"stream"})
    if unknown:
        raise RequestError(400, f"unknown generate parameters {unknown}; known: {sorted(PARAMETERS)}")
    prompt = _prompt(payload, model)
    stops = [_stop_token(s, model) for s in params.get("stop", [])]
    if model.tokenizer is not None:
        stops += list(model.tokenizer.stop_token_ids)
    try:
        max_tokens = int(params.get("max_tokens", 16))
        sampling = Sampling(float(params.get("temperature", 0.0)), int(params.get("top_k", 0)), float(params.get("top_p", 1.0)), int(params.get("seed", 0)))
        model.generator.check([prompt], max_tokens)
    except (TypeError, ValueError) as exc:
        raise RequestError(400, f"bad generate parameter: {exc}") from None
    except MlpdeployError as exc:
        raise RequestError(400, str(exc)) from None
    request_id = payload.get("id")
    return GenerateRequest(None if request_id is None else str(request_id), prompt, max_tokens, sampling, stops)


PROMPT_FIELDS = ("text_input", "input_ids", "messages")


def _prompt(payload: dict, model: ServedModel) -> list[int]:
    from mlpdeploy.runtime.tokenizer import check_messages

    if sum(key in payload for key in PROMPT_FIELDS) != 1:
        raise RequestError(400, "give exactly one of 'text_input' (a string), 'input_ids' (a list of token ids) and 'messages' (chat turns)")
    if "messages" in payload:
        if model.tokenizer is None or not model.tokenizer.has_chat_template:
            raise RequestError(400, f"model '{model.name}' has no chat template; send 'text_input' or 'input_ids'")
        try:
            return model.tokenizer.encode_chat(check_messages(payload["messages"]))
        except MlpdeployError as exc:
            raise RequestError(400, str(exc)) from None
    if "input_ids" in payload:
        ids = payload["input_ids"]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise RequestError(400, "'input_ids' must be a list of integers")
        return ids
    if not isinstance(payload["text_input"], str):
        raise RequestError(400, "'text_input' must be a string")
    if model.tokenizer is None:
        raise RequestError(400, f"no tokenizer is known for model '{model.name}'; send 'input_ids' instead of 'text_input'")
    return model.tokenizer.encode(payload["text_input"])


def _stop_token(stop, model: ServedModel) -> int:
    if isinstance(stop, int) and not isinstance(stop, bool):
        return stop
    ids = model.tokenizer.encode(stop) if isinstance(stop, str) and model.tokenizer is not None else []
    if len(ids) != 1:
        raise RequestError(400, f"stop {stop!r} is not a single token of model '{model.name}'; give one token's text or id")
    return ids[0]


class TextPieces:
    """Tokens → text pieces, holding bytes back while a multi-byte character is incomplete."""

    def __init__(self, tokenizer):
        self.tokenizer, self.held = tokenizer, []

    def add(self, token: int) -> str:
        if self.tokenizer is None:
            return ""
        self.held.append(token)
        text = self.tokenizer.decode(self.held)
        if text.endswith("\ufffd"):
            return ""
        self.held = []
        return text

    def flush(self) -> str:
        """What is still held (an incomplete character at the end, as the replacement character)."""
        text = self.tokenizer.decode(self.held) if self.tokenizer is not None and self.held else ""
        self.held = []
        return text


def _base(model: ServedModel, request: GenerateRequest) -> dict:
    base = {"model_name": model.name, "model_version": VERSION}
    return base | ({"id": request.id} if request.id is not None else {})


def run_generation(model: ServedModel, request: GenerateRequest, on_token: Callable[[int], None] | None = None) -> tuple[list[int], str]:
    """The one call from serving into the runtime for a generate request — `mlpdeploy serve`'s generate and
    generate_stream and the Triton python-backend model (`triton_generate`) all come through here. Blocks
    until the request is done; `on_token(token)` sees each new token (an exception raised in it stops the
    generation). Returns (new tokens, finish reason "stop" | "length").

    Today each request runs the runtime's generate loop at batch 1 on the calling thread; the in-flight
    batching scheduler replaces this body (the callers, and the packaged repositories, stay as they are)."""
    callback = None if on_token is None else (lambda _row, token: on_token(token))
    result = model.generator.generate([request.prompt], request.max_tokens, request.sampling, request.stop_tokens, on_token=callback)
    return result.tokens[0], result.finish[0]


def generate(model: ServedModel, request: GenerateRequest) -> dict:
    """Generate the whole answer (blocking; run in a worker thread)."""
    tokens, finish = run_generation(model, request)
    text = model.tokenizer.decode(tokens) if model.tokenizer is not None else ""
    return _base(model, request) | {"text_output": text, "output_ids": tokens, "finish_reason": finish}


class _Cancelled(Exception):
    pass


async def stream(model: ServedModel, request: GenerateRequest, on_token: Callable[[], None] | None = None) -> AsyncIterator[str]:
    """Server-sent events, one per token, from a generation running in a worker thread; stops the
    generation when the client goes away. `on_token()` is called (in the worker) for each token."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    cancelled = threading.Event()
    pieces = TextPieces(model.tokenizer)

    def push(token: int) -> None:
        if cancelled.is_set():
            raise _Cancelled
        if on_token is not None:
            on_token()
        loop.call_soon_threadsafe(events.put_nowait, ("token", token))

    def run() -> None:
        try:
            _, finish = run_generation(model, request, on_token=push)
            loop.call_soon_threadsafe(events.put_nowait, ("done", finish))
        except _Cancelled:
            pass
        except Exception as exc:  # reported to the client as an error event (the status is already 200)
            loop.call_soon_threadsafe(events.put_nowait, ("error", f"{type(exc).__name__}: {exc}"))

    worker = threading.Thread(target=run, name=f"generate-{model.name}", daemon=True)
    worker.start()
    base = _base(model, request)
    try:
        while True:
            kind, value = await events.get()
            if kind == "token":
                event = base | {"text_output": pieces.add(value), "output_ids": [value]}
            elif kind == "done":
                event = base | {"text_output": pieces.flush(), "output_ids": [], "finish_reason": value}
            else:
                event = {"error": value}
            yield f"data: {json.dumps(event)}\n\n"
            if kind != "token":
                return
    finally:
        cancelled.set()
