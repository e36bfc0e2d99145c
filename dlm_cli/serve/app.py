"""The HTTP side of ``dlm serve`` (Starlette): OpenAI's routes, server-sent events, the API key, the page.

Routes: ``GET /`` the browser view, ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` and ``GET /dlm/status`` (queue and counts). A request is parsed and
its profile validated here, then queued for the engine's worker; the handler waits for the
decode to start (or fail: a 400 still has its status) and then streams or collects its output.
A client that disconnects, while waiting or while streaming, cancels its job.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any, AsyncIterator, TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import DlmError, UsageError
from ..prompting import MAX_INPUT_BYTES
from . import schema
from .engine import Cancelled, Engine, Failed, Finished, Job, Piece, QueueFull, Started, StepEvent
from .schema import ApiError

if TYPE_CHECKING:
    from ..models.protocols import Model

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class Server:
    """What the routes share: the engine, the names the model answers to, the API key."""

    def __init__(self, engine: Engine, *, api_key: str | None = None) -> None:
        self.engine = engine
        self.api_key = api_key
        self.model_id = engine.model.info.name
        self.names = {self.model_id, *([engine.model_spec] if engine.model_spec else [])}

    # -- checks -----------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send the server's --api-key as the header "
                           "'Authorization: Bearer KEY' (the openai client's api_key)", code="invalid_api_key")

    async def body(self, request: Request) -> dict[str, Any]:
        self.authorize(request)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            # A browser on another site can send text/plain without asking first, but not JSON.
            raise ApiError(415, "send the request body as JSON with 'Content-Type: application/json'")
        data = bytearray()
        async for part in request.stream():
            data += part
            if len(data) > MAX_INPUT_BYTES:
                raise ApiError(413, f"the request body is over {MAX_INPUT_BYTES // 2**20} MiB; send a shorter prompt")
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model not in self.names:
            raise ApiError(404, f"model {model!r} is not served here; this server serves {self.model_id!r} "
                           "(GET /v1/models)", param="model", code="model_not_found")
        return body

    # -- a request becomes a job ------------------------------------------------------------
    def job(self, body: dict[str, Any], chat: bool) -> tuple[Job, Any, schema.Parsed]:
        parsed = schema.parse(body)
        prompt: Any = schema.messages(body) if chat else schema.prompt_text(body)
        session = self.engine.session
        model = session.model
        try:
            settings = session.settings_for(parsed.profile, sets=parsed.sets, flags=parsed.flags)
        except DlmError as exc:
            raise schema.from_dlm(exc) from None

        def build() -> tuple[list[int], Any]:
            ids = encode(model, prompt, chat)
            session.check_prompt(settings, [len(ids)])  # the context, an AR cap, a dLLM's trained range
            return ids, settings

        return Job(build, asyncio.get_running_loop(), parsed.stops, parsed.steps), settings, parsed

    # -- routes -----------------------------------------------------------------------------
    async def page(self, request: Request) -> Response:
        from html import escape

        from ..models.resolve import sample_prompt

        html = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
        html = html.replace("__DLM_SAMPLE_PROMPT__", escape(sample_prompt(self.engine.model.info.path)))
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    async def models(self, request: Request) -> Response:
        self.authorize(request)
        model = self.engine.model
        entry = {"id": self.model_id, "object": "model", "created": 0, "owned_by": "dlm", "kind": model.kind,
                 "family": model.info.family, "profile": self.engine.profile,
                 "draft": self.engine.draft.info.name if self.engine.draft is not None else None,
                 "max_length": model.max_length}
        return JSONResponse({"object": "list", "data": [entry]})

    async def status(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse(self.engine.status())

    async def completions(self, request: Request) -> Response:
        return await self.answer(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self.answer(request, chat=True)

    async def answer(self, request: Request, *, chat: bool) -> Response:
        body = await self.body(request)
        job, settings, parsed = self.job(body, chat)
        try:
            self.engine.submit(job)
        except QueueFull:
            raise ApiError(503, f"the server is busy: {self.engine.queue_size} requests are waiting (batch size "
                           f"{self.engine.max_batch}, queue size {self.engine.queue_size}); retry later") from None
        rid = schema.new_id("chatcmpl" if chat else "cmpl")
        watch = asyncio.create_task(_watch_disconnect(request, job))
        try:
            first = await job.out.get()  # the decode started, or failed before its first event
            if isinstance(first, Failed):
                raise ApiError(first.status, first.message)
            if isinstance(first, Cancelled):
                return Response(status_code=499)
            if parsed.stream:
                watch.cancel()  # from here the streaming response watches the connection itself
                stream = _sse(job, chat, rid, self.model_id, settings, parsed)
                return StreamingResponse(stream, media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            while True:
                item = await job.out.get()
                if isinstance(item, Finished):
                    return JSONResponse(schema.completion(chat, rid, self.model_id, item.result, settings))
                if isinstance(item, Failed):
                    raise ApiError(item.status, item.message)
                if isinstance(item, Cancelled):
                    return Response(status_code=499)
        finally:
            watch.cancel()


async def _watch_disconnect(request: Request, job: Job) -> None:
    """Cancel ``job`` when the client disconnects (the body is read: the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


def _event(data: dict[str, Any], name: str | None = None) -> str:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _sse(job: Job, chat: bool, rid: str, model: str, settings: Any, parsed: schema.Parsed) -> AsyncIterator[str]:
    """OpenAI's chunks as server-sent events; ``dlm_steps`` adds each decoder event as ``event: dlm_step``.

    A dlm_step's data has ``"choices": []``, so an OpenAI client that reads the stream skips it.
    """
    try:
        if chat:
            yield _event(schema.chunk(chat, rid, model, role=True))
        while True:
            item = await job.out.get()
            if isinstance(item, Piece):
                yield _event(schema.chunk(chat, rid, model, text=item.text))
            elif isinstance(item, StepEvent):
                yield _event({"id": rid, "object": "dlm.step", "model": model, "choices": [], **item.payload},
                             "dlm_step")
            elif isinstance(item, Finished):
                yield _event(schema.chunk(chat, rid, model, finish_reason=item.result.finish_reason))
                if parsed.include_usage:
                    yield _event(schema.chunk(chat, rid, model, result=item.result, settings=settings))
                yield "data: [DONE]\n\n"
                return
            elif isinstance(item, Failed):
                yield _event(ApiError(item.status, item.message).body())
                yield "data: [DONE]\n\n"
                return
            elif isinstance(item, Cancelled):
                return
            elif isinstance(item, Started):
                continue
    finally:
        job.cancel()  # the client left (this generator was cancelled or closed): stop at the next step


def encode(model: Model, prompt: Any, chat: bool) -> list[int]:
    """The prompt's ids, as ``dlm generate`` makes them (chat: its template; completions: raw text)."""
    from ..controltokens import encode_messages
    from ..prompting import check_size
    from ..prompting import encode as encode_prompt

    tok = model.tokenizer
    if not chat:
        if isinstance(prompt, list):
            if any(t < 0 or t >= len(tok) for t in prompt):
                raise UsageError(f"prompt holds a token id outside the vocabulary (0..{len(tok) - 1})")
            return list(prompt)
        return encode_prompt(tok, prompt, chat_template=False, context=model.max_length)
    roles = [m["role"] for m in prompt]
    if roles in (["user"], ["system", "user"]):  # exactly `dlm generate [--system S] PROMPT`
        system = prompt[0]["content"] if len(prompt) == 2 else None
        return encode_prompt(tok, prompt[-1]["content"], system=system, context=model.max_length)
    if not getattr(tok, "chat_template", None):
        raise UsageError(f"{model.info.name} has no chat template, so a conversation cannot be rendered; send "
                         "one user message (and at most one system message), or use /v1/completions")
    check_size(tok, sum(len(m["content"]) for m in prompt), model.max_length)
    return encode_messages(tok, prompt)


def _error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)
    if isinstance(exc, DlmError):
        err = schema.from_dlm(exc)
        return JSONResponse(err.body(), status_code=err.status)
    assert isinstance(exc, HTTPException)
    return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)


def create_app(engine: Engine, *, api_key: str | None = None, hosts: list[str] | None = None) -> Starlette:
    """The ASGI app; ``hosts`` limits the Host header (a loopback server refuses DNS-rebound pages)."""
    server = Server(engine, api_key=api_key)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        engine.close()

    routes = [
        Route("/", server.page),
        Route("/v1/models", server.models),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/dlm/status", server.status),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts)] if hosts else []
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={ApiError: _error_response, DlmError: _error_response,
                                        HTTPException: _error_response})
    app.state.server = server
    return app
