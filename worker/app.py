"""The simulated worker's HTTP server: vLLM's OpenAI API surface over the simulated engine.

Same routes, bodies, streaming format and `vllm:*` metric names as vLLM's own server, so the router, the
benchmark and dashboards cannot tell the two apart (except for timing, which comes from the cost model).
`max_tokens` is honoured exactly, as with `ignore_eos`, so traces replay with their real output lengths.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ecoserve.api.http import TextPiece, install_error_handlers, respond
from ecoserve.api.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    Kind,
    ResponseBuilder,
    TokenizeRequest,
)
from ecoserve.api.tokenizer import output_text

from .sim import SimEngine


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    served_model_name: str
    max_model_len: int
    default_chat_max_tokens: int = 256


def create_app(engine: SimEngine, settings: WorkerSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        yield
        await engine.stop()

    app = FastAPI(title="ecoserve simulated worker", lifespan=lifespan)
    install_error_handlers(app)
    created = int(time.time())

    def check_model(model: str | None) -> None:
        if model is not None and model != settings.served_model_name:
            raise APIError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")

    async def serve(kind: Kind, stream: bool, include_usage: bool, prompt: list[int], max_tokens: int) -> Response:
        total = len(prompt) + max_tokens
        if total > settings.max_model_len:
            raise APIError(
                400,
                f"This model's maximum context length is {settings.max_model_len} tokens. However, you requested "
                f"{total} tokens ({len(prompt)} in the prompt, {max_tokens} in the completion).",
                param="max_tokens",
            )
        builder = ResponseBuilder.new(kind, settings.served_model_name)
        try:
            queue = engine.submit(builder.id, len(prompt), max_tokens)
        except ValueError as err:
            raise APIError(400, str(err), param="max_tokens") from err

        async def pieces() -> AsyncIterator[TextPiece]:
            while True:
                event = await queue.get()
                yield TextPiece(output_text(event.index), "length" if event.last else None)
                if event.last:
                    return

        async def close() -> None:
            engine.abort(builder.id)

        return await respond(
            builder, pieces(), stream=stream, include_usage=include_usage, prompt_tokens=len(prompt), on_close=close
        )

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Response:
        check_model(req.model)
        max_tokens = req.max_tokens if req.max_tokens is not None else 16
        return await serve(Kind.COMPLETION, req.stream, req.include_usage, req.prompt_token_ids(), max_tokens)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest) -> Response:
        check_model(req.model)
        max_tokens = req.requested_max_tokens() or settings.default_chat_max_tokens
        return await serve(Kind.CHAT, req.stream, req.include_usage, req.prompt_token_ids(), max_tokens)

    @app.get("/v1/models")
    async def models() -> dict:
        card = {
            "id": settings.served_model_name,
            "object": "model",
            "created": created,
            "owned_by": "ecoserve",
            "max_model_len": settings.max_model_len,
        }
        return {"object": "list", "data": [card]}

    @app.post("/tokenize")
    async def tokenize_route(req: TokenizeRequest) -> dict:
        return {"count": len(ids := req.token_ids()), "max_model_len": settings.max_model_len, "tokens": ids}

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
