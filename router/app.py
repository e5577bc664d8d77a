"""The router's HTTP front: OpenAI-compatible routes proxied through the macro scheduler, plus health,
readiness, Prometheus metrics and a JSON status for the gateway and operators."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ecoserve.api.http import background, install_error_handlers, respond, upstream_client
from ecoserve.api.protocol import APIError, ChatCompletionRequest, CompletionRequest, Kind, ResponseBuilder

from .core import Router
from .discovery import UrlSource, follow

INSTANCE_HEADER = "x-ecoserve-instance"


def create_app(build: Callable[[httpx.AsyncClient], Router], workers: UrlSource) -> FastAPI:
    """`build` makes the Router around the app's HTTP client; `workers` keeps its worker set current (the first
    set is in place before the app serves)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with upstream_client() as client:
            router = app.state.router = build(client)
            updates = workers()
            await router.set_workers(await anext(updates))
            async with (
                background(follow(updates, router.set_workers), "router-discovery"),
                background(router.poll_forever(), "router-poll"),
            ):
                yield

    app = FastAPI(title="ecoserve router", lifespan=lifespan)
    install_error_handlers(app)

    async def proxy(kind: Kind, path: str, req: CompletionRequest | ChatCompletionRequest, raw: HTTPRequest):
        router: Router = raw.app.state.router
        prompt = req.prompt_token_ids()
        max_tokens = req.max_tokens if isinstance(req, CompletionRequest) else req.requested_max_tokens()
        tracked = router.new_request(len(prompt), max_tokens)
        pieces = router.stream(tracked, path, await raw.json())
        builder = ResponseBuilder.new(kind, req.model or router.model_name)
        return await respond(
            builder,
            pieces,
            stream=req.stream,
            include_usage=req.include_usage,
            prompt_tokens=len(prompt),
            on_close=pieces.aclose,
            headers=lambda: {INSTANCE_HEADER: tracked.instance_id or ""},
        )

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, raw: HTTPRequest) -> Response:
        return await proxy(Kind.COMPLETION, "/v1/completions", req, raw)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, raw: HTTPRequest) -> Response:
        return await proxy(Kind.CHAT, "/v1/chat/completions", req, raw)

    @app.get("/v1/models")
    async def models(raw: HTTPRequest) -> Response:
        router: Router = raw.app.state.router
        for worker in router.workers.values():
            if worker.healthy:
                with contextlib.suppress(httpx.HTTPError):
                    resp = await router.client.get(f"{worker.url}/v1/models", timeout=5.0)
                    if resp.status_code == 200:
                        return JSONResponse(resp.json())
        raise APIError(503, "no healthy worker to list models from", "ServiceUnavailable")

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/ready")
    async def ready(raw: HTTPRequest) -> Response:
        return Response(status_code=200 if raw.app.state.router.ready() else 503)

    @app.get("/metrics")
    async def metrics(raw: HTTPRequest) -> Response:
        router: Router = raw.app.state.router
        router.metrics.observe_instances(router)
        return Response(generate_latest(router.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/ecoserve/status")
    async def status(raw: HTTPRequest) -> dict:
        return raw.app.state.router.status()

    return app
