"""A macro instance's books: the macro scheduler plus everything a router must record around it.

The router (wall clock, HTTP) and the simulator (virtual clock) both keep a macro instance through this one
class, so they predict output lengths, book tokens and finishes, learn from finished requests, retry held
requests and count SLO outcomes the same way. Every method that can free capacity returns the routing
decisions it led to, for the driver to carry out.
"""

from __future__ import annotations

from .macro import MacroScheduler, Outcome, RoutingDecision, requeue
from .mitosis import MacroObservation
from .predictor import OutputLengthPredictor
from .state import InstanceState, MacroInstanceState, Request
from .window import Outcome as Finished
from .window import SloWindow


class MacroBook:
    def __init__(self, scheduler: MacroScheduler, predictor: OutputLengthPredictor, window: SloWindow) -> None:
        self.scheduler = scheduler
        self.predictor = predictor
        self.window = window
        self.state = MacroInstanceState(instances=[])
        self._where: dict[str, str] = {}

    def new_request(self, request_id: str, prompt_len: int, max_tokens: int | None, now: float) -> Request:
        predicted = self.predictor.predict(prompt_len, max_tokens)
        self.window.record_arrival(now)
        return Request(request_id, prompt_len, now, max_tokens=max_tokens, predicted_output=predicted)

    def _track(self, decisions: list[RoutingDecision], now: float) -> list[RoutingDecision]:
        for d in decisions:
            if d.outcome is Outcome.ROUTE and d.instance_id is not None:
                self._where[d.request_id] = d.instance_id
            elif d.outcome is Outcome.REJECT and d.reason != "too_large":  # too large is the client's error
                self.window.record_rejection(now)
        return decisions

    def submit(self, request: Request, now: float) -> list[RoutingDecision]:
        return self._track(self.scheduler.submit(self.state, request, now), now)

    def retry(self, now: float) -> list[RoutingDecision]:
        return self._track(self.scheduler.retry_held(self.state, now), now)

    def instance_of(self, request_id: str) -> InstanceState | None:
        wid = self._where.get(request_id)
        if wid is None:
            return None
        inst = self.state.instance(wid)
        return inst if request_id in inst.requests else None

    def on_tokens(self, request: Request, count: int, now: float) -> list[RoutingDecision]:
        """Tokens streamed for a routed request; a first token ends a prefill, which may let held ones in.
        A request whose instance left the macro instance (moved by a split or merge) finishes on its old
        route: only the request's own progress is kept, so its TTFT and TPOT still count."""
        if count <= 0:
            return []
        inst = self.instance_of(request.id)
        if inst is None:
            request.record_tokens(count, now)
            return []
        first = request.first_token_time is None
        inst.record_tokens(request.id, count, now)
        return self.retry(now) if first else []

    def on_finish(self, request: Request, now: float, outcome: str) -> list[RoutingDecision]:
        """A request ended: `ok`, `failed` (counts against the SLO) or anything else (aborted, refused)."""
        inst = self.instance_of(request.id)
        if inst is not None:
            inst.record_finish(request.id, now)
        self._where.pop(request.id, None)
        if any(h is request for h in self.state.held):
            self.state.held.remove(request)
        if outcome == "ok":
            self.predictor.observe(request.prompt_len, request.max_tokens, request.generated)
        if outcome in ("ok", "failed"):
            self.window.record(Finished(now, request.ttft(), request.tpot(), failed=outcome != "ok"))
        return self.retry(now)

    def requeue(self, request: Request, now: float) -> list[RoutingDecision]:
        """Route again, first of all, a request whose instance failed before its first token."""
        self._where.pop(request.id, None)
        requeue(self.state, request)
        return self.retry(now)

    def add_instance(self, instance: InstanceState, now: float) -> list[RoutingDecision]:
        self.state.add_instance(instance)
        return self.retry(now)

    def remove_instance(self, instance_id: str, now: float, requeue_pending: bool = True) -> list[RoutingDecision]:
        """An instance leaves. Requests not started there go back to the queue, unless the instance keeps
        serving them elsewhere (a pod moved to another macro instance finishes what it has)."""
        inst = self.state.remove_instance(instance_id)
        for request in inst.requests.values():
            self._where.pop(request.id, None)
            if requeue_pending and not request.prefilled:
                requeue(self.state, request)
        return self.retry(now)

    def headroom(self) -> float:
        """Share of KV blocks the accepting instances can still promise; 0 while requests are held (the
        gateway sends new work elsewhere first)."""
        mode = self.scheduler.settings.kv_reservation
        live = [i for i in self.state.instances if i.accepting]
        total = sum(i.kv_blocks_total for i in live)
        if not total or self.state.held:
            return 0.0
        return sum(max(i.free_blocks(mode), 0) for i in live) / total

    def saved_tpots(self, now: float) -> list[float]:
        """Saved TPOT of every decoding request right now, smallest first."""
        tpot = self.scheduler.settings.slo.tpot
        return sorted(r.saved_tpot(tpot, now) for i in self.state.instances for r in i.decoding())

    def observe(self, name: str, now: float) -> MacroObservation:
        """The mitosis planner's input: the SLO window (arrivals and rejections included), the median saved
        TPOT of the decodes and the requests held right now; `size` and `serving` are the instances routed to
        (a caller that also counts starting instances replaces `size`)."""
        stats = self.window.stats(now)
        saved = self.saved_tpots(now)
        median = saved[len(saved) // 2] if saved else None
        size = len(self.state.instances)
        return MacroObservation(
            name,
            size,
            stats.requests,
            stats.ttft_mean,
            stats.ttft_attainment,
            median,
            stats.rejected,
            stats.arrived,
            size,
            len(self.state.held),
        )
