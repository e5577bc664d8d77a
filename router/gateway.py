"""The gateway (overall scheduler): sends each request to the macro instance with the most headroom.

Stateless apart from the routers' last reported status, so several replicas can run side by side. It does
not parse completions: it pipes the chosen router's answer through byte for byte, and tries the next router
when one cannot be reached before it answered.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from ecoserve.api.http import background, install_error_handlers, upstream_client
from ecoserve.api.protocol import APIError

from .discovery import UrlSource, follow

HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass(slots=True)
class RouterView:
    url: str
    healthy: bool = False
    headroom: float = 0.0


def choose(routers: list[RouterView], turn: int) -> list[RouterView]:
    """Healthy routers by headroom, best first; `turn` rotates among equals so ties share the load."""
    healthy = [r for r in routers if r.healthy]
    if not healthy:
        return []
    rotated = healthy[turn % len(healthy) :] + healthy[: turn % len(healthy)]
    return sorted(rotated, key=lambda r: -r.headroom)


def create_gateway(source: UrlSource, poll_interval: float = 1.0) -> FastAPI:
    """`source` gives the group's router URLs as they change (macro instances split, merge or go)."""
    routers: list[RouterView] = []

    async def set_routers(urls: list[str]) -> None:
        known = {r.url: r for r in routers}
        routers[:] = [known.get(u.rstrip("/")) or RouterView(u.rstrip("/")) for u in urls]

    turns = itertools.count()
    registry = CollectorRegistry()
    forwarded = Counter("ecoserve_gateway_requests", "Requests forwarded, by router.", ["router"], registry=registry)
    failures = Counter("ecoserve_gateway_router_failures", "Routers unreachable.", ["router"], registry=registry)
    headroom = Gauge("ecoserve_gateway_router_headroom", "Reported headroom.", ["router"], registry=registry)

    async def poll(client: httpx.AsyncClient) -> None:
        while True:
            for view in list(routers):
                try:
                    resp = await client.get(f"{view.url}/ecoserve/status", timeout=2.0)
                    view.healthy = resp.status_code == 200
                    view.headroom = float(resp.json().get("headroom", 0.0)) if view.healthy else 0.0
                except (httpx.HTTPError, ValueError):
                    view.healthy, view.headroom = False, 0.0
                headroom.labels(view.url).set(view.headroom)
            await asyncio.sleep(poll_interval)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with upstream_client() as client:
            app.state.client = client
            updates = source()
            await set_routers(await anext(updates))
            async with (
                background(follow(updates, set_routers), "gateway-discovery"),
                background(poll(client), "gateway-poll"),
            ):
                yield

    app = FastAPI(title="ecoserve gateway", lifespan=lifespan)
    install_error_handlers(app)

    async def forward(raw: HTTPRequest, path: str) -> Response:
        client: httpx.AsyncClient = raw.app.state.client
        body = await raw.body()
        headers = {k: v for k, v in raw.headers.items() if k.lower() not in HOP_HEADERS | {"host"}}
        for view in choose(routers, next(turns)):
            request = client.build_request(raw.method, view.url + path, content=body, headers=headers)
            try:
                upstream = await client.send(request, stream=True)
            except httpx.TransportError:
                view.healthy = False
                failures.labels(view.url).inc()
                continue
            forwarded.labels(view.url).inc()
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}

            async def body_iter(resp: httpx.Response = upstream) -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.aiter_raw():
                        yield chunk
                finally:
                    await resp.aclose()

            return StreamingResponse(body_iter(), status_code=upstream.status_code, headers=out_headers)
        raise APIError(503, "no macro instance is reachable", "ServiceUnavailable", retry_after=1)

    @app.post("/v1/completions")
    async def completions(raw: HTTPRequest) -> Response:
        return await forward(raw, "/v1/completions")

    @app.post("/v1/chat/completions")
    async def chat(raw: HTTPRequest) -> Response:
        return await forward(raw, "/v1/chat/completions")

    @app.get("/v1/models")
    async def models(raw: HTTPRequest) -> Response:
        return await forward(raw, "/v1/models")

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/ready")
    async def ready() -> Response:
        return Response(status_code=200 if any(r.healthy for r in routers) else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/ecoserve/status")
    async def status() -> dict:
        return {"routers": [{"url": r.url, "healthy": r.healthy, "headroom": r.headroom} for r in routers]}

    return app
