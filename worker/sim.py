"""The simulated engine on the wall clock: the brain's EngineModel stepped by an asyncio task.

Each step sleeps for the cost model's duration (times `time_scale`; 0 makes an instant-response worker for
router benchmarks), then delivers the tokens it produced to the waiting HTTP handlers through per-request
queues. Aborts (client gone) free the request's KV at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from ecoserve.brain.engine import EngineModel, StepResult
from ecoserve.brain.predictor import OutputLengthPredictor
from ecoserve.brain.state import Request

from .metrics import WorkerMetrics


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """The `index`-th generated token (0-based) of a request, at wall time `time`; `last` ends the request."""

    index: int
    time: float
    last: bool


class SimEngine:
    def __init__(
        self,
        engine: EngineModel,
        predictor: OutputLengthPredictor,
        metrics: WorkerMetrics,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if time_scale < 0:
            raise ValueError(f"time_scale must be >= 0, got {time_scale}")
        self.engine = engine
        self.predictor = predictor
        self.metrics = metrics
        self.time_scale = time_scale
        self.clock = clock
        self._queues: dict[str, asyncio.Queue[TokenEvent]] = {}
        self._last_token: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def submit(self, request_id: str, prompt_len: int, max_tokens: int) -> asyncio.Queue[TokenEvent]:
        """Queue a request in the engine; its tokens arrive on the returned queue. ValueError if too big."""
        if self._task is not None and self._task.done():
            raise RuntimeError("the engine loop has stopped") from self._task.exception()
        predicted = self.predictor.predict(prompt_len, max_tokens)
        request = Request(request_id, prompt_len, self.clock(), max_tokens=max_tokens, predicted_output=predicted)
        self.engine.add(request)
        queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self._queues[request_id] = queue
        self.metrics.prompt_tokens.labels(self.metrics.model).inc(prompt_len)
        self._wake.set()
        return queue

    def abort(self, request_id: str) -> None:
        """Forget a request (finished or abandoned); frees its KV if it was still in the engine."""
        self._queues.pop(request_id, None)
        self._last_token.pop(request_id, None)
        if self.engine.abort(request_id):
            self._update_gauges()

    async def _run(self) -> None:
        while True:
            step = self.engine.plan_step(self.clock())
            self._update_gauges()
            if step is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(step.duration * self.time_scale)
            if step.preempted:
                self.metrics.preemptions.labels(self.metrics.model).inc(len(step.preempted))
            self._deliver(self.engine.finish_step(step, self.clock()))

    def _request(self, request_id: str, finished: dict[str, Request]) -> Request:
        entry = self.engine.get(request_id)
        return entry.request if entry is not None else finished[request_id]

    def _deliver(self, result: StepResult) -> None:
        m, model = self.metrics, self.metrics.model
        finished = {r.id: r for r in result.finished}
        for rid in result.tokens:
            request = self._request(rid, finished)
            if request.generated == 1:
                m.ttft.labels(model).observe(result.now - request.arrival)
            elif (last := self._last_token.get(rid)) is not None:
                m.itl.labels(model).observe(result.now - last)
            self._last_token[rid] = result.now
            m.generation_tokens.labels(model).inc()
            if (queue := self._queues.get(rid)) is not None:
                queue.put_nowait(TokenEvent(request.generated - 1, result.now, rid in finished))
        for request in result.finished:
            self._last_token.pop(request.id, None)
            m.e2e.labels(model).observe(result.now - request.arrival)
            self.predictor.observe(request.prompt_len, request.max_tokens, request.generated)

    def _update_gauges(self) -> None:
        m, model, e = self.metrics, self.metrics.model, self.engine
        m.running.labels(model).set(len(e.running))
        m.waiting.labels(model).set(len(e.waiting))
        m.kv_usage.labels(model).set(e.kv_usage)
        m.set_phase(e.phase)
