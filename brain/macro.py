"""The macro-instance scheduler: adaptive SLO-aware routing with rolling activation (EcoServe Alg. 1).

A new request goes to the active instance if its pending prefills still meet the TTFT SLO, its decodes have
enough saved TPOT to stand the prefill pause, and its KV cache can hold the request; otherwise activation
rolls to the next instance in ring order, which is checked the same way. A request no instance can take now
is held in a bounded FIFO queue and retried on the next state change; past the bound it is rejected. Every
call returns a `RoutingDecision` (data); `submit`/`retry_held` also book it into the state they were given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .kv import blocks_for_tokens
from .state import SLO, InstanceState, KVReservation, MacroInstanceState, Request, reserved_tokens
from .steptime import BatchShape, PrefillChunk, StepTimeModel, decode_time


class SlackAggregate(StrEnum):
    """How the decodes' saved TPOT is judged against the pause a prefill would cause."""

    MEAN = "mean"  # the paper's text
    MAX = "max"  # the authors' released code
    QUANTILE = "quantile"  # ours: the attainment target's share of decodes must keep saved ≥ pause


class Outcome(StrEnum):
    ROUTE = "route"
    HOLD = "hold"
    REJECT = "reject"


class Check(StrEnum):
    """Why an instance turned a request down (or `OK`)."""

    OK = "ok"
    DRAINING = "draining"
    TTFT = "ttft"
    SLACK = "slack"
    KV = "kv"


@dataclass(frozen=True, slots=True)
class MacroSchedulerSettings:
    slo: SLO
    slack_aggregate: SlackAggregate = SlackAggregate.QUANTILE
    kv_reservation: KVReservation = KVReservation.PROMPT_AND_OUTPUT
    queue_limit: int = 1024
    max_batched_tokens: int = 8192

    def __post_init__(self) -> None:
        if self.queue_limit < 0:
            raise ValueError(f"queue_limit must be >= 0, got {self.queue_limit}")
        if self.max_batched_tokens < 1:
            raise ValueError(f"max_batched_tokens must be >= 1, got {self.max_batched_tokens}")


@dataclass(frozen=True, slots=True)
class InstanceCheck:
    """One instance's verdict on one request, with the figures it was based on."""

    instance_id: str
    result: Check
    prefill_time: float = 0.0
    free_blocks: int = 0
    needed_blocks: int = 0


@dataclass(frozen=True, slots=True)
class RoutingDecision:
    """Route to `instance_id` (activating it if `rolled`), hold, or reject with `reason`."""

    request_id: str
    outcome: Outcome
    reason: str
    instance_id: str | None = None
    rolled: bool = False
    checks: tuple[InstanceCheck, ...] = ()


def prefill_finish_offsets(model: StepTimeModel, prompt_lens: Sequence[int], budget: int) -> list[float]:
    """When each prompt's prefill ends, from now, if they run FCFS in prefill-only steps of ≤ `budget` tokens.

    A prompt longer than what is left of a step's budget is chunked into the following steps, as vLLM does;
    a prompt's first token comes with the step that computes its last chunk.
    """
    offsets: list[float] = [0.0] * len(prompt_lens)
    elapsed = 0.0
    step: list[PrefillChunk] = []
    step_members: list[int] = []
    room = budget
    for k, length in enumerate(prompt_lens):
        done = 0
        while done < length:
            take = min(length - done, room)
            step.append(PrefillChunk(new_tokens=take, cached_tokens=done))
            done += take
            room -= take
            if done == length:
                step_members.append(k)
            if room == 0:
                elapsed += model.step_time(BatchShape(prefills=tuple(step)))
                for m in step_members:
                    offsets[m] = elapsed
                step, step_members, room = [], [], budget
    if step:
        elapsed += model.step_time(BatchShape(prefills=tuple(step)))
        for m in step_members:
            offsets[m] = elapsed
    return offsets


class MacroScheduler:
    """Adaptive routing and rolling activation over one macro instance's ring of instances."""

    def __init__(self, settings: MacroSchedulerSettings, model: StepTimeModel) -> None:
        self.settings = settings
        self.model = model

    def needed_blocks(self, request: Request, block_size: int) -> int:
        return blocks_for_tokens(reserved_tokens(request, self.settings.kv_reservation), block_size)

    def check(self, inst: InstanceState, request: Request, now: float) -> InstanceCheck:
        """Steps 1–3 of the routing rule for `request` on `inst`."""
        s = self.settings
        needed = self.needed_blocks(request, inst.block_size)
        free = inst.free_blocks(s.kv_reservation)
        if not inst.accepting:
            return InstanceCheck(inst.id, Check.DRAINING, free_blocks=free, needed_blocks=needed)

        pending = inst.pending_prefills()
        decodes = inst.decoding()
        # A decode step may be running: the prefill starts after it.
        wait = decode_time(self.model, len(decodes), sum(d.context_len for d in decodes))
        lens = [p.prompt_len for p in pending]
        alone = prefill_finish_offsets(self.model, [request.prompt_len], s.max_batched_tokens)
        if lens:
            with_r = prefill_finish_offsets(self.model, [*lens, request.prompt_len], s.max_batched_tokens)
            without_r = prefill_finish_offsets(self.model, lens, s.max_batched_tokens)
        else:
            with_r, without_r = alone, []
        pause = wait + with_r[-1]

        # 1. TTFT: turn the request down if it would make a pending prefill (itself included) late that
        #    would otherwise be on time. A request already too late for any instance is not held forever.
        baselines = [*without_r, alone[0]]
        for p, after, before in zip([*pending, request], with_r, baselines, strict=True):
            waited = now - p.arrival + wait
            if waited + after > s.slo.ttft >= waited + before:
                return InstanceCheck(inst.id, Check.TTFT, pause, free, needed)

        # 2. Saved TPOT: the decodes must be able to stand the pause.
        if decodes and not self._slack_ok([d.saved_tpot(s.slo.tpot, now) for d in decodes], pause):
            return InstanceCheck(inst.id, Check.SLACK, pause, free, needed)

        # 3. KV: the request's blocks (with its predicted output, if so set) must fit what is free.
        if needed > free:
            return InstanceCheck(inst.id, Check.KV, pause, free, needed)
        return InstanceCheck(inst.id, Check.OK, pause, free, needed)

    def _slack_ok(self, saved: list[float], pause: float) -> bool:
        match self.settings.slack_aggregate:
            case SlackAggregate.MEAN:
                return sum(saved) / len(saved) >= pause
            case SlackAggregate.MAX:
                return max(saved) >= pause
            case SlackAggregate.QUANTILE:
                keep = sum(1 for v in saved if v >= pause)
                return keep >= self.settings.slo.attainment * len(saved)

    def decide(self, state: MacroInstanceState, request: Request, now: float) -> RoutingDecision:
        """Where `request` goes now, trying the active instance first and then the ring in order."""
        if not state.instances:
            return RoutingDecision(request.id, Outcome.HOLD, "no_instances")
        if self._too_large(state, request):
            return RoutingDecision(request.id, Outcome.REJECT, "too_large")
        n = len(state.instances)
        checks: list[InstanceCheck] = []
        for k in range(n):
            index = (state.active + k) % n
            c = self.check(state.instances[index], request, now)
            checks.append(c)
            if c.result is Check.OK:
                return RoutingDecision(request.id, Outcome.ROUTE, "ok", c.instance_id, k > 0, tuple(checks))
        return RoutingDecision(request.id, Outcome.HOLD, "no_instance_fits", checks=tuple(checks))

    def _too_large(self, state: MacroInstanceState, request: Request) -> bool:
        """No instance of the ring could ever hold the request, even empty."""
        return bool(state.instances) and all(
            self.needed_blocks(request, i.block_size) > i.kv_blocks_total for i in state.instances
        )

    def submit(self, state: MacroInstanceState, request: Request, now: float) -> list[RoutingDecision]:
        """Admit a new request: earlier held requests get their turn first (FIFO), then this one is routed,
        held, or rejected when the queue is full. Returns every decision taken, this request's last."""
        decisions = self.retry_held(state, now)
        if state.held and not self._too_large(state, request):
            decision = RoutingDecision(request.id, Outcome.HOLD, "queue_fifo")
        else:
            decision = self.decide(state, request, now)
        if decision.outcome is Outcome.HOLD and len(state.held) >= self.settings.queue_limit:
            decision = RoutingDecision(request.id, Outcome.REJECT, "queue_full", checks=decision.checks)
        apply_decision(state, request, decision, now)
        return [*decisions, decision]

    def retry_held(self, state: MacroInstanceState, now: float) -> list[RoutingDecision]:
        """Retry held requests oldest first, stopping at the first that still cannot go anywhere.

        Drivers call this on every state change that can free capacity (a first token, a finish, a tick)."""
        decisions: list[RoutingDecision] = []
        while state.held:
            request = state.held[0]
            decision = self.decide(state, request, now)
            if decision.outcome is Outcome.HOLD:
                break
            apply_decision(state, request, decision, now)
            decisions.append(decision)
        return decisions


def apply_decision(state: MacroInstanceState, request: Request, decision: RoutingDecision, now: float) -> None:
    """Book a decision into the state: the one place routing changes it, for every driver."""
    in_queue = bool(state.held) and any(h is request for h in state.held)
    if decision.outcome is Outcome.HOLD:
        if not in_queue:
            state.held.append(request)
        return
    if in_queue:
        state.held.remove(request)
    if decision.outcome is Outcome.ROUTE:
        assert decision.instance_id is not None
        index = state.index_of(decision.instance_id)
        state.instances[index].admit(request)
        state.activate(index, now)


def requeue(state: MacroInstanceState, request: Request) -> None:
    """Take an accepted request back from an instance that failed before it started, to be routed again
    first of all: nothing accepted is dropped."""
    for inst in state.instances:
        inst.release(request.id)
    if not any(h is request for h in state.held):
        state.held.appendleft(request)
