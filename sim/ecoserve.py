"""EcoServe (PaDG) in the simulator: the router's MacroBook over engines with the temporal policy.

The same brain objects as the serving path: a MacroBook (macro scheduler, predictor, SLO window) routes, and
each instance's EngineModel runs prefill-only or decode-only steps (prefill priority, as behind a router).
The router's view of a request and the engine's are separate objects, as they are across the network.
"""

from __future__ import annotations

from ecoserve.brain.book import MacroBook
from ecoserve.brain.engine import StepResult
from ecoserve.brain.macro import MacroScheduler, MacroSchedulerSettings, Outcome, RoutingDecision
from ecoserve.brain.predictor import QuantilePredictor
from ecoserve.brain.state import InstanceState, Request
from ecoserve.brain.temporal import TemporalPolicy
from ecoserve.brain.window import SloWindow

from .core import Cluster, RequestRecord, SimInstance
from .setup import Deployment


class EcoServeCluster(Cluster):
    def __init__(self, deployment: Deployment, queue_limit: int = 1_000_000) -> None:
        super().__init__()
        d = deployment
        self.deployment = d
        settings = MacroSchedulerSettings(
            d.slo, d.slack_aggregate, d.kv_reservation, queue_limit, d.max_num_batched_tokens
        )
        self.book = MacroBook(MacroScheduler(settings, d.cost), QuantilePredictor(), SloWindow(d.slo, 60.0))
        self.instances = {i.id: i for i in d.make_instances(d.instances, TemporalPolicy(), "i")}
        for inst in self.instances.values():
            self.book.add_instance(InstanceState(inst.id, inst.engine.config.kv_blocks), 0.0)
        self._router_view: dict[str, Request] = {}

    def on_arrival(self, record: RequestRecord) -> None:
        max_tokens = record.output_len if self.deployment.max_tokens_known else None
        request = self.book.new_request(record.id, record.prompt_len, max_tokens, self.loop.now)
        self._router_view[record.id] = request
        self._carry_out(self.book.submit(request, self.loop.now))

    def _carry_out(self, decisions: list[RoutingDecision]) -> None:
        now = self.loop.now
        for d in decisions:
            record = self.records[d.request_id]
            if d.outcome is Outcome.REJECT:
                record.rejected = True
                self._router_view.pop(d.request_id, None)
            elif d.outcome is Outcome.ROUTE:
                inst = self.instances[d.instance_id]  # type: ignore[index]
                inst.engine.add(Request(record.id, record.prompt_len, now, max_tokens=record.output_len))
                self.kick(inst)

    def on_step(self, instance: SimInstance, result: StepResult) -> None:
        now = result.now
        for rid in result.tokens:
            self.records[rid].token(now)
            self._carry_out(self.book.on_tokens(self._router_view[rid], 1, now))
        for request in result.finished:
            self.records[request.id].finish = now
            self._carry_out(self.book.on_finish(self._router_view.pop(request.id), now, "ok"))
