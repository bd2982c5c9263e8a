"""The FastAPI application: `POST /v1/chat/completions`, `GET /v1/models`, `GET /health`.

A chat request goes: API key (middleware, before the body is read) -> body size cap -> a slot in
`Admission` (or 429; still before the body is read, so waiting requests hold no bodies) -> validation
(at most `MAX_MESSAGES` messages) -> messages to (system, history, question, media) -> text token caps
(per request 400, over all requests in progress 429) -> media fetched on a thread pool -> a job on the
model thread -> JSON, or server-sent events as tokens come. Every wait is
raced against the client disconnecting and against the request's deadline: a client that leaves
cancels its job, a deadline answers 504 (or ends the stream with an error event), and in both cases
the model thread stops at the next token and takes the next request.

Every error is OpenAI's JSON shape, `{"error": {"message", "type", "code", "param"}}`, with the
status that says whose fault it is: 400 invalid, 401 key, 403 media the server may not read, 404
unknown model or route, 413 too large, 429 busy, 504 out of time. User mistakes never give a 5xx,
and no response carries a traceback (bugs are logged on the server and answered with a plain 500).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import BudgetError, InputError, LongvidError
from ..limits import MAX_TEXT_TOKENS, count_text_tokens
from ..models.base import VideoLLM
from ..session import FeatureCache
from .engine import ChatOutcome, ChatTask, run_chat
from .media import MediaPolicy, MediaResolver
from .schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    Dialogue,
    ErrorDetail,
    ErrorResponse,
    LongvidInfo,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    Usage,
)
from .worker import Admission, DeadlineExceeded, JobControl, ModelWorker, QueueFull, Slot

log = logging.getLogger("longvid.serve")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
}


@dataclass
class ServerSettings:
    model_id: str
    api_key: str | None = None
    media: MediaPolicy = field(default_factory=MediaPolicy)
    max_concurrency: int = 2
    max_queue: int = 32
    timeout: float = 600.0  # seconds per request, waiting in the queue included
    frame_limit: int = 1024  # most frames one request may sample
    cache_dir: Path | None = None
    cache_items: int = 8  # encoded videos kept in memory (FeatureCache's default)
    max_text_tokens: int = MAX_TEXT_TOKENS  # system + history + question of one request
    max_text_tokens_total: int | None = None  # over all requests in progress and waiting (None: 4 requests' worth)

    @property
    def text_tokens_total(self) -> int:
        return self.max_text_tokens_total or 4 * self.max_text_tokens

    @property
    def max_body_bytes(self) -> int:
        """Room for one base64 media payload (4/3 of its size) plus the rest of a request."""
        return self.media.max_bytes * 4 // 3 + (1 << 20)


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


class ClientGone(Exception):
    """The client disconnected; nobody will read the response."""


def error_response(
    status: int, message: str, code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorResponse(
        error=ErrorDetail(message=message, type=ERROR_TYPES.get(status, "server_error"), code=code, param=param)
    )
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class ServerState:
    """What the routes share: the model, its worker thread, the admission queue, caches and settings."""

    def __init__(self, model: VideoLLM, settings: ServerSettings):
        self.model, self.settings = model, settings
        self.cache = FeatureCache(settings.cache_dir, max_items=settings.cache_items)
        self.worker = ModelWorker(model.model)
        self.admission = Admission(settings.max_concurrency, settings.max_queue, settings.text_tokens_total)
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="longvid-serve-"))
        self.media = MediaResolver(settings.media, self.tmp_dir)
        self.created = int(time.time())

    def count_text(self, dialogue: Dialogue, slot: Slot) -> None:
        """Refuse too much text before any work: 400 over the per-request cap, 429 over the server's."""
        texts = [dialogue.system, *(t for turn in dialogue.history for t in turn), dialogue.question]
        try:
            tokens = count_text_tokens(
                self.model.tokenizer, texts, self.settings.max_text_tokens, "the conversation's text"
            )
        except InputError as e:
            raise APIError(400, str(e), "text_too_long", "messages") from None
        slot.reserve_text(tokens)

    async def start_job(
        self,
        dialogue: Dialogue,
        request: ChatCompletionRequest,
        control: JobControl,
        slot: Slot,
        emit: Callable[[str], None] | None = None,
    ) -> asyncio.Future[ChatOutcome]:
        """Fetch the media and queue the job; the slot and temp files go when the job does."""
        loop = asyncio.get_running_loop()
        slot.claimed = True
        fetching = loop.run_in_executor(None, self.media.resolve, dialogue.media.url, dialogue.media.kind)
        try:
            media = await asyncio.shield(fetching)
        except BaseException:  # failed, or cancelled mid-download: clean up once the download has ended
            fetching.add_done_callback(partial(_discard_fetch, slot))
            raise
        task = ChatTask(
            media,
            dialogue.question,
            dialogue.history,
            dialogue.system,
            dialogue.media.sampling,
            request.max_new_tokens,
            request.generation(),
            request.stop,
        )

        def finished(_):
            media.cleanup()
            loop.call_soon_threadsafe(slot.release)

        run_async = getattr(self.model, "run_chat_async", None)
        if run_async is not None:  # an engine that schedules and batches requests itself (--engine vllm)
            running = asyncio.ensure_future(run_async(task, control, self.settings.frame_limit, emit))
            running.add_done_callback(finished)
            return running
        job = self.worker.submit(
            partial(run_chat, self.model, self.cache, task, control, self.settings.frame_limit, emit), control
        )
        job.add_done_callback(finished)
        return asyncio.wrap_future(job)

    def health(self) -> dict[str, Any]:
        a = self.admission
        return {
            "status": "ok",
            "model": self.settings.model_id,
            "busy": self.worker.busy,
            "requests": {
                "in_progress": a.active,
                "waiting": a.waiting,
                "rejected": a.rejected,
                "max_concurrency": a.max_concurrency,
                "max_queue": a.max_queue,
            },
            "jobs": {k: self.worker.stats[k] for k in ("completed", "cancelled", "timed_out", "invalid", "failed")},
            "feature_cache": {"hits": self.cache.hits, "misses": self.cache.misses},
        }


def _discard_fetch(slot, fetching: asyncio.Future) -> None:
    slot.release()
    if not fetching.cancelled() and fetching.exception() is None:
        fetching.result().cleanup()


async def guarded(request: Request, control: JobControl, awaitable: Awaitable):
    """Await `awaitable` unless the client disconnects (ClientGone) or time runs out (DeadlineExceeded);
    either way the work is cancelled and its job told to stop."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, gone}, timeout=control.remaining(), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        control.cancel()
        raise
    finally:
        gone.cancel()
    if work in done:
        return work.result()
    work.cancel()
    control.cancel()
    with suppress(asyncio.CancelledError, Exception):
        await work
    if gone in done:
        raise ClientGone()
    raise DeadlineExceeded(f"the request did not finish within {control.timeout:g} s")


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so only a disconnect can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


# ------------------------------------------------------------------------------------------ responses


def _usage(out: ChatOutcome) -> Usage:
    return Usage(
        prompt_tokens=out.prompt_tokens,
        completion_tokens=out.completion_tokens,
        total_tokens=out.prompt_tokens + out.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(visual_tokens=out.visual_tokens),
    )


def _info(out: ChatOutcome, started: float) -> LongvidInfo:
    timings = {**out.timings, "request": round(time.perf_counter() - started, 6)}
    return LongvidInfo(
        plan=out.plan.to_dict(),
        num_frames=len(out.plan),
        visual_tokens=out.visual_tokens,
        feature_cache="hit" if out.cache_hit else "miss",
        timings=timings,
    )


async def _events(
    state: ServerState,
    body: ChatCompletionRequest,
    control: JobControl,
    job: asyncio.Future,
    events: asyncio.Queue,
    first: str | None,
    started: float,
) -> AsyncIterator[str]:
    """The SSE stream: a role chunk, one chunk per delta, the finish chunk, usage if asked, [DONE]."""
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: Delta | None, finish: str | None = None, **extra) -> str:
        choices = [ChunkChoice(delta=delta, finish_reason=finish)] if delta is not None else []
        return ChatCompletionChunk(
            id=ident, created=created, model=state.settings.model_id, choices=choices, **extra
        ).sse(body.include_usage)

    try:
        yield chunk(Delta(role="assistant", content=""))
        delta = first
        while delta is not None:
            yield chunk(Delta(content=delta))
            delta = await events.get()
        try:
            out = job.result()
        except Exception as e:  # the job failed after streaming began: say so in the stream
            status, message, code = _classify(e)
            yield f"data: {error_response(status, message, code).body.decode()}\n\n"
        else:
            yield chunk(Delta(), out.finish_reason, longvid=_info(out, started))
            if body.include_usage:
                yield chunk(None, usage=_usage(out))
        yield "data: [DONE]\n\n"
    finally:  # the client went away (or all is sent): make sure the job stops
        control.cancel()


# ------------------------------------------------------------------------------------------ errors


def _classify(e: BaseException) -> tuple[int, str, str | None]:
    """(status, message, code) of an exception that ends a request."""
    if isinstance(e, APIError):
        return e.status, e.message, e.code
    if isinstance(e, QueueFull):
        return 429, str(e), "queue_full"
    if isinstance(e, DeadlineExceeded):
        return 504, str(e), "timeout"
    if isinstance(e, BudgetError):
        return 400, str(e), "context_length_exceeded"
    if isinstance(e, LongvidError):
        status = getattr(e, "status", 400)
        codes = {400: "invalid_request", 403: "media_refused", 413: "payload_too_large", 504: "media_timeout"}
        return status, str(e), codes.get(status)
    log.error("internal error", exc_info=e)
    return 500, "internal server error (see the server log)", "internal_error"


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    if first["type"] == "json_invalid":
        return f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'decode error')})", None
    where = [_location(e["loc"]) for e in errors[:3]]
    if where == [""] and first["type"] == "missing":
        return "the request body is missing (expected a JSON object)", None
    messages = [e["msg"].removeprefix("Value error, ") for e in errors[:3]]
    return "; ".join(f"{w}: {m}" if w else m for w, m in zip(where, messages)), where[0] or None


def _location(loc: tuple) -> str:
    """`messages.0.content.1.fps`: without "body" and without pydantic's union tag after a part's index."""
    keep = [
        x
        for i, x in enumerate(loc)
        if x != "body" and not (i >= 2 and loc[i - 2] == "content" and isinstance(loc[i - 1], int))
    ]
    return ".".join(str(x) for x in keep)


def install_error_handlers(app: FastAPI) -> None:
    async def on_validation(_, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return error_response(400, message, "invalid_request", param)

    async def on_http(_, exc: StarletteHTTPException):
        messages = {
            404: "no such route",
            405: "method not allowed",
            413: "the request body is larger than this server accepts",
        }
        return error_response(
            exc.status_code,
            messages.get(exc.status_code, str(exc.detail)),
            "payload_too_large" if exc.status_code == 413 else None,
            headers=exc.headers,
        )

    async def on_error(_, exc: Exception):
        status, message, code = _classify(exc)
        return error_response(status, message, code, headers={"Retry-After": "1"} if status == 429 else None)

    async def on_gone(_, exc: ClientGone):
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ClientGone, on_gone)
    for cls in (APIError, QueueFull, DeadlineExceeded, LongvidError, Exception):
        app.add_exception_handler(cls, on_error)


class PayloadTooLarge(StarletteHTTPException):
    def __init__(self):
        super().__init__(413)


class BodyLimitMiddleware:
    """Refuses bodies over `limit` bytes: at once by Content-Length, else while they stream in (never buffered)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            status, message = (
                (413, "the request body is larger than this server accepts")
                if length.isdigit()
                else (400, "invalid Content-Length header")
            )
            return await error_response(status, message, "payload_too_large" if status == 413 else None)(
                scope, receive, send
            )
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise PayloadTooLarge()  # FastAPI re-raises HTTP exceptions from body reading: a 413
            return message

        await self.app(scope, limited, send)


class AdmitFirst:
    """Takes the request's `Admission` slot before its body is read: a full server answers 429 without
    reading it, and requests waiting for a slot hold no bodies. The slot goes to the handler through
    the scope; if the handler does not hand it on to a job (a refusal), it is released here."""

    PATHS = ("/v1/chat/completions",)

    def __init__(self, app: ASGIApp, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.PATHS:
            return await self.app(scope, receive, send)
        started = time.monotonic()
        try:
            slot = await asyncio.wait_for(self.state.admission.acquire(), self.state.settings.timeout)
        except QueueFull as e:
            return await error_response(429, str(e), "queue_full", headers={"Retry-After": "1"})(scope, receive, send)
        except asyncio.TimeoutError:
            message = f"the request did not finish within {self.state.settings.timeout:g} s"
            return await error_response(504, message, "timeout")(scope, receive, send)
        scope.setdefault("state", {}).update(longvid_slot=slot, longvid_started=started)
        try:
            await self.app(scope, receive, send)
        finally:
            if not slot.claimed:
                slot.release()


class APIKeyMiddleware:
    """Requires `Authorization: Bearer KEY` on /v1 routes, before anything else is read (/health is open)."""

    def __init__(self, app: ASGIApp, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            auth = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.key):
                message = "invalid API key" if auth else "missing API key (send Authorization: Bearer KEY)"
                response = error_response(401, message, "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


# ------------------------------------------------------------------------------------------ the app


def create_app(model: VideoLLM, settings: ServerSettings) -> FastAPI:
    state = ServerState(model, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        state.worker.start()
        try:
            yield
        finally:
            state.worker.stop()
            if hasattr(model, "shutdown"):  # an engine with processes of its own (--engine vllm)
                model.shutdown()
            shutil.rmtree(state.tmp_dir, ignore_errors=True)

    app = FastAPI(title="longvid", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.longvid = state
    install_error_handlers(app)
    app.add_middleware(AdmitFirst, state=state)  # innermost: after the key and the size checks
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.api_key:  # added last: runs first, so nothing is read for a request without the key
        app.add_middleware(APIKeyMiddleware, key=settings.api_key)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return state.health()

    def card() -> ModelCard:
        return ModelCard(id=settings.model_id, created=state.created, max_model_len=model.context_limit())

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[card()])

    @app.get("/v1/models/{model_id:path}")
    async def model_card(model_id: str) -> ModelCard:
        if model_id != settings.model_id:
            raise APIError(
                404, f"model {model_id!r} not found; this server serves {settings.model_id!r}", "model_not_found"
            )
        return card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        started = time.perf_counter()
        if body.model is not None and body.model != settings.model_id:
            raise APIError(
                404,
                f"model {body.model!r} not found; this server serves {settings.model_id!r}",
                "model_not_found",
                "model",
            )
        dialogue = Dialogue.from_request(body)
        wanted = dialogue.media.sampling.get("num_frames")
        if wanted is not None and wanted > settings.frame_limit:  # before any plan is built
            raise APIError(
                400,
                f"the request samples {wanted} frames; this server allows at most "
                f"{settings.frame_limit} (lower nframes / fps, or set max_frames)",
                "invalid_request",
                "nframes",
            )
        slot: Slot = request.scope["state"]["longvid_slot"]
        state.count_text(dialogue, slot)
        control = JobControl(settings.timeout, request.scope["state"]["longvid_started"])
        if not body.stream:
            job = await guarded(request, control, state.start_job(dialogue, body, control, slot))
            out = await guarded(request, control, job)
            completion = ChatCompletion(
                id=f"chatcmpl-{uuid.uuid4().hex}",
                created=int(time.time()),
                model=settings.model_id,
                choices=[Choice(message=AssistantMessage(content=out.text), finish_reason=out.finish_reason)],
                usage=_usage(out),
                longvid=_info(out, started),
            )
            return JSONResponse(completion.model_dump())

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[str | None] = asyncio.Queue()
        emit = partial(loop.call_soon_threadsafe, events.put_nowait)
        job = await guarded(request, control, state.start_job(dialogue, body, control, slot, emit))
        job.add_done_callback(lambda _: events.put_nowait(None))  # after every delta: same thread order
        first = await guarded(request, control, events.get())
        if first is None:
            job.result()  # failed before the first token: a proper HTTP error, not a broken stream
        return StreamingResponse(
            _events(state, body, control, job, events, first, started),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    return app
