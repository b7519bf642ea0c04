"""Triton's generate extension over the runtime's in-flight batching scheduler (`runtime.scheduler`).

Request (`POST .../generate` or `.../generate_stream`): `{"id"?, "text_input": str | "input_ids":
[int] | "messages": [{"role", "content"}], "parameters"?: {...}}` (`messages`: chat turns, formatted
with the tokenizer's chat template and ended with the assistant's turn; `text_input` is sent as it is); parameters (also accepted at the top level, as Triton passes extra
fields on): `max_tokens` (default 16), `temperature` (0: greedy), `top_k`, `top_p`, `seed`,
`stop` (a list of token texts or ids). `text_input` needs the model's tokenizer (the zoo's byte
models, or a Hugging Face directory's).

Response: `{"id"?, "model_name", "model_version", "text_output", "output_ids", "finish_reason"}`;
`generate_stream` sends one server-sent event per token (`text_output` the new text, held back
while a multi-byte character is incomplete) and a last one with `finish_reason`. A full queue
answers 503 `{"error": "Exceeds maximum queue size"}` (Triton's); a client that disconnects
cancels its request (its row is freed at the scheduler's next step).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.serving.models import VERSION, ServedModel
from mlpdeploy.serving.protocol import RequestError

CLIENT_CLOSED = 499  # nginx's status for a client that closed the connection first (never seen by that client)
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

    if model.scheduler is None:
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
        model.scheduler.check(prompt, max_tokens)
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


def submit_generation(model: ServedModel, request: GenerateRequest, on_event: Callable[[str, object], None] | None = None):
    """The one call from serving into the runtime for a generate request — `mlpdeploy serve`'s generate and
    generate_stream and the Triton python-backend model (`triton_generate`, through `run_generation`) all
    come through here. Hands the request to the model's scheduler (`runtime.scheduler`: in-flight batching,
    or one request per thread for builds that cannot batch) and returns its `Request` at once:
    `on_event(kind, value)` sees ("token", id) … then ("end", finish) or ("error", message), on the
    scheduler's thread (it must not block). A full queue is a 503 with Triton's message; a request that
    can never run (the model's context, the cache budget) a 400."""
    from mlpdeploy.runtime.scheduler import QUEUE_FULL, QueueFull

    try:
        return model.scheduler.submit(request.prompt, request.max_tokens, request.sampling, request.stop_tokens, on_event)
    except QueueFull:
        raise RequestError(503, QUEUE_FULL) from None
    except MlpdeployError as exc:
        raise RequestError(400, str(exc)) from None


def run_generation(model: ServedModel, request: GenerateRequest, on_token: Callable[[int], None] | None = None) -> tuple[list[int], str]:
    """`submit_generation`, blocking until the request is done; `on_token(token)` sees each new token on the
    calling thread (an exception raised in it cancels the request — its row is freed at the next step —
    and propagates). Returns (new tokens, finish reason "stop" | "length")."""
    handle = submit_generation(model, request)
    try:
        for token in handle.stream():
            if on_token is not None:
                on_token(token)
    except BaseException:
        handle.cancel()
        raise
    return handle.wait()


class _Events:
    """A request's events, handed from the scheduler's thread to the event loop."""

    def __init__(self, tokens: bool):
        self.loop, self.queue, self.tokens = asyncio.get_running_loop(), asyncio.Queue(), tokens
        self.handle = None

    def push(self, kind: str, value) -> None:
        if kind == "token" and not self.tokens:
            return
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is gone (server shut down): nobody reads this request any more
            if self.handle is not None:
                self.handle.cancel()


async def generate(model: ServedModel, request: GenerateRequest, disconnected: Callable[[], Awaitable[None]]) -> dict:
    """Generate the whole answer; `disconnected()` returns when the client goes away, which cancels the request."""
    events = _Events(tokens=False)
    handle = events.handle = submit_generation(model, request, events.push)
    ended = asyncio.ensure_future(events.queue.get())
    gone = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({ended, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not ended.done():
            ended.cancel()
            handle.cancel()
    if ended.cancelled():
        raise RequestError(CLIENT_CLOSED, "the client disconnected; its generation was cancelled")
    kind, value = ended.result()
    if kind == "error":
        raise RuntimeError(value)
    tokens = list(handle.tokens)
    text = model.tokenizer.decode(tokens) if model.tokenizer is not None else ""
    return _base(model, request) | {"text_output": text, "output_ids": tokens, "finish_reason": value}


def start_stream(model: ServedModel, request: GenerateRequest, on_token: Callable[[], None] | None = None) -> AsyncIterator[str]:
    """Submit the request now (a full queue or a request that cannot run raises its RequestError here,
    before any response is sent) and return its server-sent events, one per token; the request is
    cancelled when the stream is closed early (the client went away). `on_token()` is called per token."""
    events = _Events(tokens=True)
    handle = events.handle = submit_generation(model, request, events.push)
    return _stream(model, request, handle, events, on_token)


async def _stream(model, request, handle, events: _Events, on_token) -> AsyncIterator[str]:
    pieces = TextPieces(model.tokenizer)
    base = _base(model, request)
    try:
        while True:
            kind, value = await events.queue.get()
            if kind == "token":
                if on_token is not None:
                    on_token()
                event = base | {"text_output": pieces.add(value), "output_ids": [value]}
            elif kind == "end":
                event = base | {"text_output": pieces.flush(), "output_ids": [], "finish_reason": value}
            else:  # reported to the client as an error event (the status is already 200)
                event = {"error": value}
            yield f"data: {json.dumps(event)}\n\n"
            if kind != "token":
                return
    finally:
        handle.cancel()
