"""The event loop and what every strategy shares: instances that step engines, and per-request records."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ecoserve.bench.workload import WorkloadRequest
from ecoserve.brain.engine import EngineModel, Step, StepResult
from ecoserve.brain.state import Request


@dataclass(slots=True)
class RequestRecord:
    """What a user of the simulated cluster saw of one request."""

    id: str
    arrival: float
    prompt_len: int
    output_len: int
    first_token: float | None = None
    last_token: float | None = None
    finish: float | None = None
    tokens: int = 0
    rejected: bool = False

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def tpot(self) -> float | None:
        if self.first_token is None or self.last_token is None or self.tokens < 2:
            return None
        return (self.last_token - self.first_token) / (self.tokens - 1)

    def token(self, now: float) -> None:
        if self.first_token is None:
            self.first_token = now
        self.last_token = now
        self.tokens += 1


@dataclass(slots=True)
class SimInstance:
    """One engine and the step it is running, if any."""

    id: str
    engine: EngineModel
    step: Step | None = None
    steps: int = 0


class EventLoop:
    """A heap of (time, sequence, callback, argument); callbacks run at their time and may schedule more."""

    def __init__(self) -> None:
        self.now = 0.0
        self.events = 0
        self._heap: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()

    def at(self, time: float, callback: Callable[[Any], None], arg: Any = None) -> None:
        heapq.heappush(self._heap, (time, next(self._seq), callback, arg))

    def run(self) -> None:
        heap = self._heap
        while heap:
            time, _, callback, arg = heapq.heappop(heap)
            self.now = time
            self.events += 1
            callback(arg)


class Cluster:
    """A simulated cluster: arrivals come in, engines step, tokens go out. Strategies fill in the hooks."""

    def __init__(self) -> None:
        self.loop = EventLoop()
        self.records: dict[str, RequestRecord] = {}

    # --- hooks ---------------------------------------------------------------------------------------

    def on_arrival(self, record: RequestRecord) -> None:
        raise NotImplementedError

    def on_step(self, instance: SimInstance, result: StepResult) -> None:
        """Tokens and finishes of a step that just ended on `instance`."""
        raise NotImplementedError

    # --- mechanics -----------------------------------------------------------------------------------

    def run(self, workload: Sequence[WorkloadRequest]) -> list[RequestRecord]:
        for k, w in enumerate(workload):
            record = RequestRecord(f"q{k}", w.arrival, w.prompt_tokens, w.output_tokens)
            self.records[record.id] = record
            self.loop.at(w.arrival, self._arrive, record)
        self.loop.run()
        return list(self.records.values())

    def _arrive(self, record: RequestRecord) -> None:
        self.on_arrival(record)

    def admit(self, instance: SimInstance, record: RequestRecord, request: Request, computed: int = 0) -> None:
        """Hand a request to an engine and start it stepping; one the engine can never hold is rejected."""
        try:
            instance.engine.add(request, computed)
        except ValueError:
            record.rejected = True
            return
        self.kick(instance)

    def deliver(self, result: StepResult) -> None:
        """Tokens and finishes of a step reach their users."""
        for rid in result.tokens:
            self.records[rid].token(result.now)
        for request in result.finished:
            self.records[request.id].finish = result.now

    def kick(self, instance: SimInstance) -> None:
        """Start the instance's next step if it is idle and has work."""
        if instance.step is not None:
            return
        step = instance.engine.plan_step(self.loop.now)
        if step is not None:
            instance.step = step
            instance.steps += 1
            self.loop.at(self.loop.now + step.duration, self._step_done, instance)

    def _step_done(self, instance: SimInstance) -> None:
        step, instance.step = instance.step, None
        assert step is not None
        self.on_step(instance, instance.engine.finish_step(step, self.loop.now))
        self.kick(instance)
