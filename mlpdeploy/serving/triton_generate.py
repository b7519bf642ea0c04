"""Generate requests of a cached decoder in Triton's Python backend (decoupled mode, inside `model.py`).

A request carries its prompt as `input_ids` (INT64 [n]) or `text_input` (BYTES [1], models with a
tokenizer), and its settings as optional tensors (`max_tokens` INT32, `temperature` FP32, `top_k`
INT32, `top_p` FP32, `seed` INT64, `stop_ids` INT64 [k], `stream` BOOL) or as request parameters
(Triton's generate endpoint turns its `"parameters": {...}` object into them; Triton takes scalar
parameters only, so `stop` there is one token's text or id) — the meanings of `mlpdeploy serve`'s
generate endpoint; a tensor wins over a parameter of the same name. It is checked by the same code
(`parse_generate_request`).

Responses: without `stream` one response with every new token (`output_ids`), `text_output` and
`finish_reason` — what Triton's `/generate` endpoint needs; with `stream: true` one response per
token (`output_ids` [1] and its `text_output` piece) and a last one with `finish_reason` and empty
`output_ids` (`/generate_stream`, or a gRPC stream). `text_output` and `finish_reason` are strings,
sent where the Python backend handles strings (see `triton_tensors`). Each request waits for its
tokens in a worker thread, through `run_generation` (the one entry point into the runtime): the
model's in-flight batching scheduler generates them, every request in one decode step. A full
scheduler queue is answered UNAVAILABLE "Exceeds maximum queue size" (HTTP 503), as Triton's own
queue; a request Triton reports cancelled stops at its next token and frees its row (the server's
log says so, with the scheduler's load after it left: `CancelLog`).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mlpdeploy.errors import MlpdeployError
from mlpdeploy.serving.generate import TextPieces, parse_generate_request, run_generation
from mlpdeploy.serving.models import ServedModel
from mlpdeploy.serving.protocol import RequestError
from mlpdeploy.serving.triton_tensors import numpy_path_sound, output_tensor, read_input, read_strings

# optional input tensors → the generate parameter they carry
UNBOUNDED_WAITERS = 256  # requests waiting at once when the queue has no limit (max_queue_size 0)
SETTINGS = {"max_tokens": "max_tokens", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "seed": "seed",
            "stop_ids": "stop", "stream": "stream"}


class _Cancelled(Exception):
    pass


def triton_error(pb_utils, message: str, code: str = "INVALID_ARG"):
    """A `TritonError` with `code` (INVALID_ARG: the client's fault, INTERNAL: the model's) where the backend has codes."""
    status = getattr(pb_utils.TritonError, code, None)
    return pb_utils.TritonError(message) if status is None else pb_utils.TritonError(message, status)


class CancelLog:
    """A scheduler observer that logs each cancelled request as it leaves (its row and budget free again)."""

    def __init__(self, log, scheduler):
        self.log, self.scheduler = log, scheduler

    def step(self, rows: int, seconds: float) -> None:
        pass

    def finished(self, request) -> None:
        if request.finish == "cancelled":
            self.log.log_info(f"mlpdeploy: a cancelled request left after {len(request.tokens)} of {request.max_tokens} tokens; "
                              f"the scheduler now: {self.scheduler.stats()}")


class TritonGenerate:
    """The decoupled generate side of the Triton model for one cached decoder."""

    def __init__(self, pb_utils, model: ServedModel, log):
        self.pb, self.model = pb_utils, model
        if hasattr(model.scheduler, "observers"):
            model.scheduler.observers.append(CancelLog(log, model.scheduler))
        self.strings = numpy_path_sound(pb_utils)
        if not self.strings:
            log.log_warn("this Python backend predates numpy-2 support (pybind11 < 2.12, Triton < 24.11): token ids only, "
                         "no text_input, text_output or finish_reason — a text_input request ends its stub; "
                         "use Triton >= 24.11 or numpy < 2 in the execution environment for text")
        # one waiting thread per request in the scheduler (its batch and queue); the scheduler bounds the work, and a
        # full queue is answered at once rather than held here
        options = getattr(model.scheduler, "options", None)
        waiting = options.max_queue_size if options is not None and options.max_queue_size else UNBOUNDED_WAITERS
        self.workers = ThreadPoolExecutor(max_workers=(options.max_batch if options else 1) + waiting, thread_name_prefix="generate")

    def execute(self, requests) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                generate, stream = self.parse(request)
            except (RequestError, MlpdeployError) as exc:
                self._fail(sender, str(getattr(exc, "message", exc)))
                continue
            self.workers.submit(self._run, request, sender, generate, stream)

    def parse(self, request):
        """(GenerateRequest, stream) from the request's tensors and parameters."""
        payload: dict = {}
        params = json.loads(request.parameters() or "{}")
        ids, text = read_input(self.pb, request, "input_ids"), read_strings(self.pb, request, "text_input")
        if ids is not None:
            payload["input_ids"] = [int(i) for i in ids.reshape(-1)]
        if text is not None:
            value = text.reshape(-1)[0]
            payload["text_input"] = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
        for tensor, key in SETTINGS.items():
            value = read_input(self.pb, request, tensor)
            if value is not None:
                params[key] = value.reshape(-1).tolist() if key == "stop" else value.reshape(-1)[0].item()
        if isinstance(params.get("stop"), str | int):  # Triton's parameters are scalars: one stop token there, more in stop_ids
            params["stop"] = [params["stop"]]
        stream = params.pop("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(400, f"'stream' must be true or false, got {stream!r}")
        payload["parameters"] = params
        return parse_generate_request(json.dumps(payload).encode(), self.model), stream

    def _run(self, request, sender, generate, stream: bool) -> None:
        pieces = TextPieces(self.model.tokenizer if self.strings else None)

        def on_token(token: int) -> None:
            if request.is_cancelled():
                raise _Cancelled
            if stream:
                sender.send(self._response([token], pieces.add(token)))

        try:
            tokens, finish = run_generation(self.model, generate, on_token)
        except _Cancelled:
            sender.send(flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        except RequestError as exc:  # refused by the scheduler: a full queue (503) or a request that cannot run (400)
            self._fail(sender, exc.message, "UNAVAILABLE" if exc.status == 503 else "INVALID_ARG")
            return
        except Exception as exc:  # a failure inside the runtime: the client gets it as the response's error
            self._fail(sender, f"{type(exc).__name__}: {exc}", "INTERNAL")
            return
        if stream:
            response = self._response([], pieces.flush(), finish)
        else:
            text = self.model.tokenizer.decode(tokens) if self.strings and self.model.tokenizer is not None else ""
            response = self._response(tokens, text, finish)
        sender.send(response, flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _response(self, tokens: list[int], text: str, finish: str | None = None):
        tensors = [output_tensor(self.pb, "output_ids", np.array(tokens, np.int64))]
        if self.strings and self.model.tokenizer is not None:
            tensors.append(output_tensor(self.pb, "text_output", np.array([text.encode()], dtype=object)))
        if self.strings and finish is not None:
            tensors.append(output_tensor(self.pb, "finish_reason", np.array([finish.encode()], dtype=object)))
        return self.pb.InferenceResponse(output_tensors=tensors)

    def _fail(self, sender, message: str, code: str = "INVALID_ARG") -> None:
        error = triton_error(self.pb, message, code)
        sender.send(self.pb.InferenceResponse(output_tensors=[], error=error), flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def close(self) -> None:
        self.workers.shutdown(wait=True, cancel_futures=True)
