"""FastAPI plumbing shared by every server: OpenAI-style errors at the edge, streamed or whole answers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from .protocol import SSE_DONE, APIError, ResponseBuilder, Usage, error_body, sse, validation_message


def install_error_handlers(app: FastAPI) -> None:
    """Bad JSON, schema violations, unknown routes and APIErrors all answer {"error": {...}}."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(list(exc.errors()))
        return JSONResponse(error_body(message, "invalid_request_error", param, 400), status_code=400)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(str(exc.detail), "invalid_request_error", None, exc.status_code), exc.status_code
        )


@dataclass(frozen=True, slots=True)
class TextPiece:
    """One generated token's text, and the finish reason on the last one."""

    text: str
    finish_reason: str | None = None


async def respond(
    builder: ResponseBuilder,
    pieces: AsyncIterator[TextPiece],
    *,
    stream: bool,
    include_usage: bool,
    prompt_tokens: int,
    on_close: Callable[[], Awaitable[None]],
    headers: Callable[[], dict[str, str]] = dict,
) -> Response:
    """Answer from a source of generated text, streamed as server-sent events or as one JSON body.

    The first piece is awaited before the response starts, so anything that fails before the first token
    (a full queue, an unreachable worker) still answers with a proper HTTP status. A failure after that ends
    the stream with an explicit error event and no [DONE], never a silent truncation. `on_close` runs
    however the response ends (finished, failed or the client gone); `headers` is asked once the first piece
    is there (the router names the instance that serves the request).
    """
    try:
        first = await anext(pieces, None)
    except BaseException:
        await on_close()
        raise
    if not stream:
        try:
            collected = [] if first is None else [first, *[p async for p in pieces]]
        finally:
            await on_close()
        text = "".join(p.text for p in collected)
        finish = collected[-1].finish_reason if collected else None
        return JSONResponse(builder.full(text, finish, Usage(prompt_tokens, len(collected))), headers=headers())

    async def events() -> AsyncIterator[bytes]:
        produced = 0
        try:
            if (role := builder.role_chunk()) is not None:
                yield sse(role)
            rest = pieces if first is None else _prepend(first, pieces)
            async for piece in rest:
                produced += 1
                yield sse(builder.chunk(piece.text, piece.finish_reason))
            if include_usage:
                yield sse(builder.usage_chunk(Usage(prompt_tokens, produced)))
            yield SSE_DONE
        except APIError as err:
            yield sse(err.body())
        finally:
            await on_close()

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers())


async def _prepend(first: TextPiece, rest: AsyncIterator[TextPiece]) -> AsyncIterator[TextPiece]:
    yield first
    async for piece in rest:
        yield piece


@asynccontextmanager
async def upstream_client() -> AsyncIterator[httpx.AsyncClient]:
    """The one pooled client a proxy uses for everything upstream; no read timeout (streams are long)."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=1024)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(10.0, read=None)) as client:
        yield client


@asynccontextmanager
async def background(coro: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    """Run `coro` for the lifetime of the block, cancelled on the way out."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
