"""The macro-instance router: the brain's MacroScheduler driven on the wall clock over real workers.

Every request is streamed from its worker, so the router sees each first token and every later token and
keeps per-request progress (TTFT, tokens, saved TPOT) itself; KV capacity comes from the workers' metrics
and the router's own accounting. Decisions come from the brain; this module only carries them out: it
parks held requests on futures, proxies routed ones, re-routes a request whose worker failed before its first
token, and ends a stream that fails later with an explicit error.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx

from ecoserve.api.http import TextPiece
from ecoserve.api.protocol import APIError
from ecoserve.brain.book import MacroBook
from ecoserve.brain.macro import Outcome, RoutingDecision
from ecoserve.brain.state import InstanceState, Phase, Request

from .metrics import RouterMetrics
from .upstream import WorkerInfo, parse_sse_line, probe_worker, served_model

MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class RouterSettings:
    hold_timeout: float = 60.0  # seconds a request may wait in the hold queue before a 503
    poll_interval: float = 1.0  # seconds between worker health/metrics polls
    retry_after: int = 1  # Retry-After seconds on 429/503
    upstream_timeout: float = 600.0


@dataclass(slots=True)
class Worker:
    """A worker the router proxies to, with what its last poll said."""

    id: str
    url: str
    healthy: bool = True
    phase: Phase = Phase.IDLE
    failures: int = 0
    info: WorkerInfo | None = None


@dataclass(slots=True)
class Tracked:
    """A request the router has accepted: the brain's view of it, and where it went."""

    request: Request
    decided: asyncio.Future[RoutingDecision] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    instance_id: str | None = None


class Router:
    def __init__(
        self,
        book: MacroBook,
        metrics: RouterMetrics,
        client: httpx.AsyncClient,
        settings: RouterSettings = RouterSettings(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.book = book
        self.state = book.state
        self.metrics = metrics
        self.client = client
        self.settings = settings
        self.clock = clock
        self.workers: dict[str, Worker] = {}
        self.model_name = "default"
        self._tracked: dict[str, Tracked] = {}
        self._ids = itertools.count()

    # --- workers -------------------------------------------------------------------------------------

    async def set_workers(self, urls: list[str]) -> None:
        """Make the worker set exactly `urls` (static list or a discovery update); probe new ones first."""
        wanted = {url.rstrip("/") for url in urls}
        for wid, worker in list(self.workers.items()):
            if worker.url not in wanted:
                self._remove_worker(wid)
        for url in sorted(wanted - {w.url for w in self.workers.values()}):
            info = await probe_worker(self.client, url)
            if not self.workers:
                self.model_name = await served_model(self.client, url) or self.model_name
            wid = url.split("://", 1)[-1]
            self.workers[wid] = Worker(wid, url, info=info)
            # Until its metrics say how big its KV cache is, a worker takes no requests (see _set_health).
            kv_total = info.num_gpu_blocks if info else 1
            state = InstanceState(wid, kv_total, info.block_size if info else 16, accepting=False)
            self._apply(self.book.add_instance(state, self.clock()))
            self._set_health(self.workers[wid], info is not None)
        self._on_change()

    def _remove_worker(self, wid: str) -> None:
        """A worker leaving the set. Its streams go on: a worker moved to another macro instance (split, merge)
        finishes them on their old route, and a dead one fails them, which routes those without a first token
        again (see `stream`); so nothing is queued twice here."""
        del self.workers[wid]
        self._apply(self.book.remove_instance(wid, self.clock(), requeue_pending=False))

    def _set_health(self, worker: Worker, healthy: bool) -> None:
        worker.healthy = healthy
        inst = self.state.instance(worker.id)
        inst.accepting = healthy and worker.info is not None
        if worker.info is not None:
            inst.kv_blocks_total = worker.info.num_gpu_blocks
            if not inst.requests:  # reservations are counted in blocks of the old size
                inst.block_size = worker.info.block_size

    async def poll_forever(self) -> None:
        """Refresh every worker's health, KV usage and phase; a worker that stops answering takes no new work."""
        while True:
            await asyncio.gather(*(self._poll(w) for w in list(self.workers.values())))
            self._on_change()
            self.metrics.observe_instances(self)
            await asyncio.sleep(self.settings.poll_interval)

    async def _poll(self, worker: Worker) -> None:
        info = await probe_worker(self.client, worker.url)
        if worker.id not in self.workers:
            return
        if info is not None:
            worker.info = info
            worker.phase = info.phase
            self.state.instance(worker.id).kv_blocks_used_observed = info.used_blocks
        self._set_health(worker, info is not None)

    def ready(self) -> bool:
        return any(w.healthy for w in self.workers.values())

    # --- routing -------------------------------------------------------------------------------------

    def _on_change(self) -> None:
        """Capacity may have freed: held requests get their turn, oldest first."""
        self._apply(self.book.retry(self.clock()))

    def _apply(self, decisions: list[RoutingDecision]) -> None:
        for d in decisions:
            self.metrics.decisions.labels(d.outcome.value, d.reason).inc()
            tracked = self._tracked.get(d.request_id)
            if d.outcome is not Outcome.HOLD and tracked is not None and not tracked.decided.done():
                tracked.decided.set_result(d)
        self.metrics.queue_depth.set(len(self.state.held))

    async def _route(self, tracked: Tracked, first_attempt: bool) -> str:
        """Wait for the brain to place the request; the instance id it was routed to."""
        if first_attempt:
            self._apply(self.book.submit(tracked.request, self.clock()))
        try:
            decision = await asyncio.wait_for(asyncio.shield(tracked.decided), self.settings.hold_timeout)
        except TimeoutError:
            raise APIError(
                503, "no instance could take the request in time", "ServiceUnavailable", None, self.settings.retry_after
            ) from None
        if decision.outcome is Outcome.REJECT:
            if decision.reason == "too_large":
                raise APIError(400, "the request does not fit the KV cache of any instance", param="max_tokens")
            raise APIError(
                429, "the router's queue is full; retry later", "RateLimitError", None, self.settings.retry_after
            )
        assert decision.instance_id is not None
        return decision.instance_id

    def new_request(self, prompt_len: int, max_tokens: int | None) -> Tracked:
        tracked = Tracked(self.book.new_request(f"r{next(self._ids)}", prompt_len, max_tokens, self.clock()))
        self._tracked[tracked.request.id] = tracked
        return tracked

    async def stream(self, tracked: Tracked, path: str, body: dict) -> AsyncIterator[TextPiece]:
        """Route, then proxy the worker's stream as text pieces, booking every token into the brain's state.

        A worker that fails before the first token is marked down and the request routed again (up to
        MAX_ATTEMPTS); after the first token a failure ends the stream with an APIError (502).
        """
        request = tracked.request
        upstream = body | {"stream": True, "stream_options": {"include_usage": True}}
        outcome = "error"
        try:
            for attempt in range(MAX_ATTEMPTS):
                wid = tracked.instance_id = await self._route(tracked, first_attempt=attempt == 0)
                try:
                    async for piece in self._proxy(wid, path, upstream, request):
                        yield piece
                    outcome = "ok"
                    return
                except _WorkerFailed as err:
                    self._mark_down(wid)
                    if request.first_token_time is not None or attempt == MAX_ATTEMPTS - 1:
                        raise APIError(502, f"worker {wid} failed: {err}", "BadGateway") from None
                    tracked.decided = asyncio.get_running_loop().create_future()
                    self._apply(self.book.requeue(request, self.clock()))
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "aborted"
            raise
        except APIError as err:
            if err.status in (429, 503):
                outcome = "rejected" if err.status == 429 else "timeout"
            else:
                outcome = "invalid" if 400 <= err.status < 500 else "error"
            raise
        finally:
            self._finish(tracked, outcome)

    async def _proxy(self, wid: str, path: str, body: dict, request: Request) -> AsyncIterator[TextPiece]:
        worker = self.workers.get(wid)
        if worker is None:
            raise _WorkerFailed("it left the macro instance")
        try:
            async with self.client.stream(
                "POST", worker.url + path, json=body, timeout=self.settings.upstream_timeout
            ) as resp:
                if resp.status_code >= 500:
                    raise _WorkerFailed(f"HTTP {resp.status_code}")
                if resp.status_code != 200:
                    raise _client_error(resp.status_code, await resp.aread())
                done = False
                async for line in resp.aiter_lines():
                    event = parse_sse_line(line)
                    if event is None:
                        continue
                    if event == "[DONE]":
                        done = True
                        break
                    if "error" in event:
                        message = event["error"].get("message", "error")
                        raise _WorkerFailed(f"error event: {message}")
                    for choice in event.get("choices", []):
                        text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
                        finish = choice.get("finish_reason")
                        if text or finish:
                            if text:
                                self._book_token(request)
                            yield TextPiece(text, finish)
                if not done:
                    raise _WorkerFailed("the stream ended without [DONE]")
        except httpx.TransportError as err:
            raise _WorkerFailed(f"{type(err).__name__}: {err}") from None

    def _book_token(self, request: Request) -> None:
        first = request.first_token_time is None
        self._apply(self.book.on_tokens(request, 1, self.clock()))
        if first and request.first_token_time is not None:
            self.metrics.ttft.observe(request.first_token_time - request.arrival)

    def _mark_down(self, wid: str) -> None:
        if (worker := self.workers.get(wid)) is not None:
            worker.failures += 1
            self._set_health(worker, False)

    def _finish(self, tracked: Tracked, outcome: str) -> None:
        request = tracked.request
        self._tracked.pop(request.id, None)
        if outcome == "ok" and (tpot := request.tpot()) is not None:
            self.metrics.tpot.observe(tpot)
        book_outcome = {"ok": "ok", "error": "failed", "timeout": "failed"}.get(outcome, outcome)
        self._apply(self.book.on_finish(request, self.clock(), book_outcome))
        self.metrics.requests.labels(outcome).inc()

    def status(self) -> dict:
        """The router's view, as JSON: headroom for the gateway, the mitosis planner's inputs (`planner`) for
        the operator or `ecoserve up --autoscale`, and the rest for humans."""
        now = self.clock()
        stats = self.book.window.stats(now)
        saved = self.book.saved_tpots(now)
        observed = self.book.observe("", now)
        scheduler = self.book.scheduler.settings
        instances = []
        for k, inst in enumerate(self.state.instances):
            worker = self.workers[inst.id]
            instances.append(
                {
                    "id": inst.id,
                    "url": worker.url,
                    "healthy": worker.healthy,
                    "active": k == self.state.active,
                    "phase": worker.phase.value,
                    "requests": len(inst.requests),
                    "pending_prefills": len(inst.pending_prefills()),
                    "kv_blocks_total": inst.kv_blocks_total,
                    "kv_blocks_free": inst.free_blocks(scheduler.kv_reservation),
                }
            )
        return {
            "instances": instances,
            "in_flight": len(self._tracked),  # accepted and not yet ended: a router may stop once this is 0
            "queue_depth": len(self.state.held),
            "queue_limit": scheduler.queue_limit,
            "headroom": self.book.headroom(),
            "window": {
                "seconds": self.book.window.seconds,
                "requests": stats.requests,
                "ttft_mean": stats.ttft_mean,
                "ttft_attainment": stats.ttft_attainment,
                "slo_attainment": stats.slo_attainment,
                "goodput": stats.goodput,
                "rejected": stats.rejected,
                "arrived": stats.arrived,
            },
            "saved_tpot": {
                "decoding": len(saved),
                "min": saved[0] if saved else None,
                "median": observed.saved_tpot,
            },
            "planner": observed.to_json(),
        }


class _WorkerFailed(Exception):
    """The worker could not serve the request (down, 5xx, broken stream)."""


def _client_error(status: int, raw: bytes) -> APIError:
    """A worker's 4xx, passed on to the client with its message."""
    try:
        error = json.loads(raw).get("error", {})
        message, param = error.get("message", raw.decode(errors="replace")), error.get("param")
    except (ValueError, AttributeError):
        message, param = raw.decode(errors="replace"), None
    return APIError(status, str(message), "invalid_request_error", param)
