"""The HTTP routes: the OpenAI API (models, completions, chat completions), health, the playground.

Built on Starlette (the ASGI toolkit FastAPI is made of), with request bodies checked by the
pydantic models of :mod:`nima.serving.schemas`, planned by :mod:`nima.serving.plans` and run on
the engine by :mod:`nima.serving.streams`; this module shapes the OpenAI responses. Every problem
is an :class:`~nima.serving.schemas.APIError`, answered as ``{"error": {...}}`` with its status.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from importlib import resources
from typing import Any

from nima.errors import NimaError
from nima.inference.generate import encode_prompt
from nima.serving import streams
from nima.serving.chat_template import Message
from nima.serving.extra import require_serve_extra
from nima.serving.plans import ServedModel, check_model, completion_prompts, plan_request
from nima.serving.schemas import APIError, ChatCompletionRequest, CompletionRequest, parse_request

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route
except ImportError:  # the serve extra is not installed: say so in one line
    require_serve_extra()
    raise

MAX_BODY_BYTES = 1 << 20
"""Largest request body (1 MiB); larger ones get 413."""
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def create_app(served: ServedModel) -> Starlette:
    """The ASGI application serving ``served`` (run it with uvicorn; see :mod:`nima.serving.server`)."""
    routes = [
        Route("/", _playground, methods=["GET"]),
        Route("/health", _health, methods=["GET"]),
        Route("/v1/models", _models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", _model, methods=["GET"]),
        Route("/v1/completions", _completions, methods=["POST"]),
        Route("/v1/chat/completions", _chat_completions, methods=["POST"]),
    ]
    handlers = {APIError: _api_error, HTTPException: _http_error, Exception: _server_error}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.served = served
    return app


# -- errors ---------------------------------------------------------------------------------------


async def _api_error(request: Request, err: Exception) -> Response:
    assert isinstance(err, APIError)
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _http_error(request: Request, err: Exception) -> Response:
    assert isinstance(err, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
    message = f"{request.method} {request.url.path}: {err.detail}"
    return JSONResponse(APIError(err.status_code, message, code=code).body(), status_code=err.status_code)


async def _server_error(request: Request, err: Exception) -> Response:
    body = APIError(500, f"internal error: {type(err).__name__}: {err}", type="server_error").body()
    return JSONResponse(body, status_code=500)


# -- simple routes --------------------------------------------------------------------------------


async def _playground(request: Request) -> Response:
    page = resources.files("nima.serving").joinpath("playground.html").read_text(encoding="utf-8")
    return HTMLResponse(page)


async def _health(request: Request) -> Response:
    served: ServedModel = request.app.state.served
    engine = served.engine
    return JSONResponse(
        {"status": "ok", "model": served.model_id, "running": engine.running, "waiting": engine.waiting}
    )


def _model_card(served: ServedModel) -> dict[str, Any]:
    return {"id": served.model_id, "object": "model", "created": served.created, "owned_by": "nima"}


async def _models(request: Request) -> Response:
    served = _authorized(request)
    return JSONResponse({"object": "list", "data": [_model_card(served)]})


async def _model(request: Request) -> Response:
    served = _authorized(request)
    check_model(served, request.path_params["model_id"])
    return JSONResponse(_model_card(served))


def _authorized(request: Request) -> ServedModel:
    """The served model, or a 401 APIError when a key is set and the request lacks it."""
    served: ServedModel = request.app.state.served
    if served.api_key is None:
        return served
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), served.api_key.encode()):
        what = "missing" if not header else "wrong"
        raise APIError(
            401,
            f"API key {what}: send the server's key as 'Authorization: Bearer KEY'",
            code="invalid_api_key",
        )
    return served


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 past MAX_BODY_BYTES (without reading more of it)."""
    too_large = APIError(
        413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="request_too_large"
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


# -- generation routes ----------------------------------------------------------------------------


async def _completions(request: Request) -> Response:
    served = _authorized(request)
    req: CompletionRequest = parse_request(CompletionRequest, await _read_body(request))
    check_model(served, req.model)
    prompts, texts = completion_prompts(served, req)
    plan = plan_request(served, req, prompts, texts, req.max_tokens, extra_stop=())
    run = streams.Run(served.engine, plan, _mailbox(request), request.receive)
    head = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": served.model_id,
    }
    echo = [texts[p] if req.echo else "" for p, _ in plan.choices]

    def chunk(index: int, text: str, finish: str | None) -> dict[str, Any]:
        return {
            **head,
            "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}],
        }

    if plan.stream:
        shapes = streams.ChunkShapes(
            opening=lambda i: [chunk(i, echo[i], None)] if echo[i] else [],
            piece=lambda i, text: chunk(i, text, None),
            closing=lambda i, reason: chunk(i, "", reason),
            usage=lambda usage: {**head, "choices": [], "usage": usage},
        )
        return _stream(request, run, shapes)
    answers = await streams.collect(run)
    choices = [
        {"text": echo[i] + a.text, "index": i, "logprobs": None, "finish_reason": a.finish_reason}
        for i, a in enumerate(answers)
    ]
    usage = plan.usage([a.completion_tokens for a in answers])
    return JSONResponse({**head, "choices": choices, "usage": usage})


async def _chat_completions(request: Request) -> Response:
    served = _authorized(request)
    req: ChatCompletionRequest = parse_request(ChatCompletionRequest, await _read_body(request))
    check_model(served, req.model)
    template = served.chat_template
    try:
        text = template.render([Message(m.role, m.text()) for m in req.messages])
        ids = encode_prompt(served.tokenizer, text)
    except NimaError as err:
        raise APIError(400, str(err), param="messages", code="invalid_value") from None
    plan = plan_request(served, req, [ids], [text], req.max_new_tokens, extra_stop=template.stop)
    run = streams.Run(served.engine, plan, _mailbox(request), request.receive)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def head(kind: str) -> dict[str, Any]:
        return {"id": rid, "object": kind, "created": created, "model": served.model_id}

    strip = template.strip_leading_space  # the plain template's answer follows "Assistant:"

    if plan.stream:

        def chunk(index: int, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**head("chat.completion.chunk"), "choices": [choice]}

        shapes = streams.ChunkShapes(
            opening=lambda i: [chunk(i, {"role": "assistant", "content": ""}, None)],
            piece=lambda i, text: chunk(i, {"content": text}, None),
            closing=lambda i, reason: chunk(i, {}, reason),
            usage=lambda usage: {**head("chat.completion.chunk"), "choices": [], "usage": usage},
            strip_leading_spaces=strip,
        )
        return _stream(request, run, shapes)
    answers = await streams.collect(run)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": a.text.lstrip(" ") if strip else a.text},
            "logprobs": None,
            "finish_reason": a.finish_reason,
        }
        for i, a in enumerate(answers)
    ]
    usage = plan.usage([a.completion_tokens for a in answers])
    return JSONResponse({**head("chat.completion"), "choices": choices, "usage": usage})


def _mailbox(request: Request) -> streams.Mailbox:
    """The app's one mailbox from the engine to the event loop serving it (made on first use)."""
    mailbox = getattr(request.app.state, "mailbox", None)
    if mailbox is None:
        mailbox = request.app.state.mailbox = streams.Mailbox(asyncio.get_running_loop())
    return mailbox


def _stream(request: Request, run: streams.Run, shapes: streams.ChunkShapes) -> StreamingResponse:
    """The server-sent events of ``run`` (already submitted: a full queue was a 503 status rather
    than an error inside a 200 stream)."""
    body = streams.events(run, shapes)
    return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)
