"""The KServe v2 HTTP protocol as Triton serves it, on Starlette (run by uvicorn, see `server`).

    GET  /v2                                         server metadata (name, version, extensions)
    GET  /v2/health/live | /v2/health/ready
    GET  /v2/models/<name>[/versions/1]              model metadata (tensors, -1 for dynamic dims)
    GET  /v2/models/<name>[/versions/1]/ready
    GET  /v2/models/<name>[/versions/1]/config       the Triton config `mlpdeploy package` writes, as JSON
    POST /v2/models/<name>[/versions/1]/infer        JSON tensors and the binary-tensor extension
    POST /v2/models/<name>[/versions/1]/generate | generate_stream   (cached decoders; server-sent events)
    POST /v2/repository/index                        the models served
    GET  /metrics                                    Prometheus text format

Errors are Triton's error JSON `{"error": "..."}`: 400 for a bad request (malformed JSON, wrong
input names, shapes or datatypes), 404 for an unknown model or version, 413 for a body over the
limit, 503 when a decoder's queue is full ("Exceeds maximum queue size", as Triton; the server
stays healthy), 500 for a failure inside the model. Inference runs in worker threads (the engine is
safe for concurrent calls), so a slow request does not hold up the others; generate requests go to
the model's in-flight batching scheduler (`runtime.scheduler`) without holding a thread.
"""

from __future__ import annotations

import time
import zlib

from mlpdeploy import __version__
from mlpdeploy.errors import require
from mlpdeploy.serving.generate import generate, parse_generate_request, start_stream
from mlpdeploy.serving.metrics import Metrics
from mlpdeploy.serving.models import VERSION, ServedModel
from mlpdeploy.serving.protocol import HEADER_LENGTH, RequestError, encode_infer_response, parse_infer_request

EXTENSIONS = ["binary_tensor_data", "model_configuration", "generate", "metrics"]
DEFAULT_MAX_BODY = 64 << 20


def _model(models: dict[str, ServedModel], request) -> ServedModel:
    name = request.path_params["name"]
    if name not in models:
        raise RequestError(404, f"Request for unknown model: '{name}' is not found")
    version = request.path_params.get("version")
    if version is not None and version != VERSION:
        raise RequestError(404, f"Request for unknown model: '{name}' version {version} is not found (served: {VERSION})")
    return models[name]


async def read_body(request, limit: int) -> bytes:
    """The request body, decompressed (gzip / deflate Content-Encoding); 413 past `limit` bytes. An
    oversized body is drained (not kept) so the client gets the 413 rather than a reset connection."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise RequestError(413, f"request body of {size} bytes exceeds the server's limit of {limit} bytes (mlpdeploy serve --max-body-mb)")
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise RequestError(400, f"request body is not valid {encoding}: {exc}") from None
        if len(body) > limit:
            raise RequestError(413, f"decompressed request body exceeds the server's limit of {limit} bytes")
    elif encoding != "identity":
        raise RequestError(400, f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    return body


def create_app(models: dict[str, ServedModel], max_body_bytes: int = DEFAULT_MAX_BODY):
    """The ASGI app serving `models` (name → ServedModel)."""
    require("starlette", "serve", "mlpdeploy serve")
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    metrics = Metrics()
    for model in models.values():
        if model.scheduler is not None:
            model.scheduler.observers.append(metrics.scheduler_observer(model.name))

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def measured(endpoint: str, handler):
        """Handler → endpoint that times it, counts its outcome and answers RequestError as Triton does."""
        async def endpoint_fn(request):
            start, name = time.perf_counter(), request.path_params.get("name", "")
            try:
                response = await handler(request)
            except RequestError as exc:
                response = error(exc.status, exc.message)
            except Exception as exc:  # a failure inside the model or the server: 500, the server stays up
                response = error(500, f"{type(exc).__name__}: {exc}")
            metrics.observe(name if name in models else "", endpoint, response.status_code, time.perf_counter() - start)
            return response
        return endpoint_fn

    async def server_metadata(request):
        return JSONResponse({"name": "mlpdeploy", "version": __version__, "extensions": EXTENSIONS})

    async def health(request):
        return Response(status_code=200)

    async def model_metadata(request):
        return JSONResponse(_model(models, request).metadata())

    async def model_ready(request):
        _model(models, request)
        return Response(status_code=200)

    async def model_config(request):
        return JSONResponse(_model(models, request).config())

    async def repository_index(request):
        return JSONResponse([{"name": n, "version": VERSION, "state": "READY"} for n in models])

    async def infer(request):
        model = _model(models, request)
        body = await read_body(request, max_body_bytes)

        def run():
            parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
            results = model.infer(parsed)
            first = next(iter(parsed.inputs.values()), None)
            metrics.inferences.labels(model.name).inc(first.shape[0] if first is not None and first.ndim else 1)
            return encode_infer_response(model.name, VERSION, parsed, results)

        content, header_length = await run_in_threadpool(run)
        if header_length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})

    async def generate_once(request):
        model = _model(models, request)
        parsed = parse_generate_request(await read_body(request, max_body_bytes), model)

        async def disconnected():  # the body is read: the next message is the client going away
            while (await request.receive())["type"] != "http.disconnect":
                pass

        result = await generate(model, parsed, disconnected)
        metrics.tokens.labels(model.name).inc(len(result["output_ids"]))
        return JSONResponse(result)

    async def generate_stream(request):
        model = _model(models, request)
        parsed = parse_generate_request(await read_body(request, max_body_bytes), model)
        tokens = metrics.tokens.labels(model.name)
        # StreamingResponse stops the stream when the client disconnects, which cancels the request
        return StreamingResponse(start_stream(model, parsed, on_token=tokens.inc), media_type="text/event-stream; charset=utf-8")

    async def metrics_text(request):
        content, media_type = metrics.exposition()
        return Response(content, media_type=media_type)

    def model_routes(suffix: str, handler, methods: list[str], endpoint: str) -> list:
        fn = measured(endpoint, handler)
        return [Route(f"/v2/models/{{name}}{suffix}", fn, methods=methods),
                Route(f"/v2/models/{{name}}/versions/{{version}}{suffix}", fn, methods=methods)]

    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", health),
        Route("/v2/health/ready", health),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/metrics", metrics_text),
        *model_routes("", model_metadata, ["GET"], "metadata"),
        *model_routes("/ready", model_ready, ["GET"], "ready"),
        *model_routes("/config", model_config, ["GET"], "config"),
        *model_routes("/infer", infer, ["POST"], "infer"),
        *model_routes("/generate", generate_once, ["POST"], "generate"),
        *model_routes("/generate_stream", generate_stream, ["POST"], "generate_stream"),
    ]

    async def http_error(request, exc: HTTPException):
        return error(exc.status_code, exc.detail if exc.status_code != 404 else f"no such endpoint: {request.method} {request.url.path}")

    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})
