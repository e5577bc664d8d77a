"""EcoServe (PaDG) in the simulator: routers' MacroBooks over engines with the temporal policy, and, when
mitosis is on, the planner growing, shrinking, splitting and merging macro instances as load changes.

The same brain objects as the serving path: each macro instance is a MacroBook (macro scheduler, predictor,
SLO window), each instance an EngineModel running prefill-only or decode-only steps (prefill priority, as
behind a router), and the overall scheduler sends a request to the macro instance with the most headroom,
as the gateway does. The router's view of a request and the engine's are separate objects, as they are
across the network; the router's KV view also takes the engine's usage after every step, as the real router
takes `vllm:kv_cache_usage_perc`. An instance moved to another macro instance keeps its engine and finishes
its requests on their old route; a shrunk one drains before it goes; a grown one starts after a delay.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ecoserve.bench.workload import WorkloadRequest
from ecoserve.brain.book import MacroBook
from ecoserve.brain.engine import StepResult
from ecoserve.brain.macro import MacroScheduler, MacroSchedulerSettings, Outcome, RoutingDecision
from ecoserve.brain.mitosis import (
    Action,
    MacroObservation,
    MitosisPlanner,
    MitosisSettings,
    ScalingDecision,
    sibling_name,
)
from ecoserve.brain.predictor import QuantilePredictor
from ecoserve.brain.state import InstanceState, Request
from ecoserve.brain.temporal import TemporalPolicy
from ecoserve.brain.window import SloWindow

from .core import Cluster, RequestRecord, SimInstance
from .setup import Deployment


@dataclass(frozen=True, slots=True)
class MitosisRun:
    """How the planner runs in the loop."""

    settings: MitosisSettings
    interval: float = 30.0  # seconds between plans
    startup_delay: float = 30.0  # a new instance loads its model for this long before it serves
    window: float = 30.0  # seconds of each router's SLO window


@dataclass(frozen=True, slots=True)
class ScalingEvent:
    time: float
    decision: ScalingDecision
    sizes: tuple[tuple[str, int], ...]  # the group after the decision was carried out


@dataclass(slots=True)
class Macro:
    name: str
    book: MacroBook
    members: dict[str, SimInstance] = field(default_factory=dict)
    starting: set[str] = field(default_factory=set)  # instances loading their model to join this one


class EcoServeCluster(Cluster):
    def __init__(self, deployment: Deployment, mitosis: MitosisRun | None = None, queue_limit: int = 1_000_000):
        super().__init__()
        self.deployment = deployment
        self.mitosis = mitosis
        self.planner = MitosisPlanner(mitosis.settings) if mitosis else None
        self._settings = MacroSchedulerSettings(
            deployment.slo,
            deployment.slack_aggregate,
            deployment.kv_reservation,
            queue_limit,
            deployment.max_num_batched_tokens,
        )
        self.group = "g"
        self.macros: dict[str, Macro] = {}
        self.instances: dict[str, SimInstance] = {}
        self.draining: set[str] = set()
        self.events: list[ScalingEvent] = []
        self._macro_of: dict[str, str] = {}  # instance id -> macro name
        self._owner: dict[str, tuple[MacroBook, Request]] = {}  # request id -> the book routing it
        self._ids = itertools.count()
        self._last_change: float | None = None
        self._pending = 0  # requests not yet arrived
        first = self._new_macro()
        for _ in range(deployment.instances):
            self._start_instance(first.name, 0.0)

    # --- building blocks -----------------------------------------------------------------------------

    def _new_macro(self) -> Macro:
        name = sibling_name(self.group, self.macros) if self.macros else self.group
        window = self.mitosis.window if self.mitosis else 60.0
        scheduler = MacroScheduler(self._settings, self.deployment.cost)
        book = MacroBook(scheduler, QuantilePredictor(), SloWindow(self.deployment.slo, window))
        self.macros[name] = macro = Macro(name, book)
        return macro

    def _start_instance(self, macro: str, delay: float) -> None:
        (inst,) = self.deployment.make_instances(1, TemporalPolicy(), "i")
        inst.id = f"i{next(self._ids)}"
        if delay <= 0:
            self._join(inst, macro)
        else:
            self.macros[macro].starting.add(inst.id)
            self.loop.at(self.loop.now + delay, self._join_later, inst)

    def _join_later(self, inst: SimInstance) -> None:
        # The macro instance it was started for, or the one that merged it in meanwhile.
        macro = next(m for m in self.macros.values() if inst.id in m.starting)
        macro.starting.discard(inst.id)
        self._join(inst, macro.name)

    def _join(self, inst: SimInstance, macro: str) -> None:
        self.instances[inst.id] = inst
        self._macro_of[inst.id] = macro
        m = self.macros[macro]
        m.members[inst.id] = inst
        state = InstanceState(inst.id, inst.engine.config.kv_blocks, inst.engine.config.block_size)
        state.kv_blocks_used_observed = inst.engine.used_blocks
        state.accepting = inst.id not in self.draining
        self._carry_out(m.book, m.book.add_instance(state, self.loop.now))

    def _move(self, instance_id: str, target: str) -> None:
        """Relabel a running instance into another macro instance: it keeps its engine and its requests."""
        source = self.macros[self._macro_of[instance_id]]
        inst = source.members.pop(instance_id)
        self._carry_out(source.book, source.book.remove_instance(instance_id, self.loop.now, requeue_pending=False))
        self._join(inst, target)

    # --- traffic -------------------------------------------------------------------------------------

    def run(self, workload: Sequence[WorkloadRequest]) -> list[RequestRecord]:
        self._pending = len(workload)
        if self.mitosis:
            self.loop.at(self.mitosis.interval, self._plan)
        return super().run(workload)

    def on_arrival(self, record: RequestRecord) -> None:
        self._pending -= 1
        macro = max(self.macros.values(), key=lambda m: (m.book.headroom(), len(m.members), m.name))
        max_tokens = record.output_len if self.deployment.max_tokens_known else None
        request = macro.book.new_request(record.id, record.prompt_len, max_tokens, self.loop.now)
        self._owner[record.id] = (macro.book, request)
        self._carry_out(macro.book, macro.book.submit(request, self.loop.now))

    def _carry_out(self, book: MacroBook, decisions: list[RoutingDecision]) -> None:
        now = self.loop.now
        for d in decisions:
            record = self.records[d.request_id]
            if d.outcome is Outcome.REJECT:
                record.rejected = True
                self._owner.pop(d.request_id, None)
            elif d.outcome is Outcome.ROUTE:
                request = Request(record.id, record.prompt_len, now, max_tokens=record.output_len)
                self.admit(self.instances[d.instance_id], record, request)  # type: ignore[index]

    def on_step(self, instance: SimInstance, result: StepResult) -> None:
        now = result.now
        self.deliver(result)
        for rid in result.tokens:
            book, request = self._owner[rid]
            self._carry_out(book, book.on_tokens(request, 1, now))
        for finished in result.finished:
            book, request = self._owner.pop(finished.id)
            self._carry_out(book, book.on_finish(request, now, "ok"))
        macro = self._macro_of.get(instance.id)
        if macro is not None:
            state = self.macros[macro].book.state.instance(instance.id)
            state.kv_blocks_used_observed = instance.engine.used_blocks
        if instance.id in self.draining and len(instance.engine) == 0:
            self._retire(instance.id)

    # --- mitosis -------------------------------------------------------------------------------------

    def _plan(self, _: object = None) -> None:
        assert self.planner is not None and self.mitosis is not None
        now = self.loop.now
        observations = [self._observe(m, now) for m in self.macros.values()]
        observations = [o for o in observations if o.size > 0]
        decision = self.planner.plan(observations, now, self._last_change)
        if decision.action is not Action.NONE:
            self._carry_out_scaling(decision)
            self._last_change = now
            sizes = tuple((m.name, len(m.members)) for m in self.macros.values())
            self.events.append(ScalingEvent(now, decision, sizes))
        if self._pending > 0 or self._owner:
            self.loop.at(now + self.mitosis.interval, self._plan)

    def _observe(self, macro: Macro, now: float) -> MacroObservation:
        """The router's figures, sized as the operator sizes a MacroInstance: the instances it wants, starting
        ones included and draining ones not."""
        wanted = sum(1 for i in macro.members if i not in self.draining) + len(macro.starting)
        return replace(macro.book.observe(macro.name, now), size=wanted)

    def _carry_out_scaling(self, d: ScalingDecision) -> None:
        delay = self.mitosis.startup_delay if self.mitosis else 0.0
        match d.action:
            case Action.GROW:
                for _ in range(d.add):
                    self._start_instance(d.target, delay)  # type: ignore[arg-type]
            case Action.SHRINK:
                self._drain(d.target, 1)  # type: ignore[arg-type]
            case Action.SPLIT:
                sibling = self._new_macro()
                movers = sorted(self.macros[d.target].members)[-d.move :] if d.move else []  # type: ignore[index]
                for iid in movers:
                    self._move(iid, sibling.name)
                for _ in range(d.add):
                    self._start_instance(sibling.name, delay)
            case Action.MERGE:
                source = self.macros[d.source]  # type: ignore[index]
                for iid in list(source.members):
                    self._move(iid, d.target)  # type: ignore[arg-type]
                del self.macros[d.source]  # type: ignore[arg-type]
                target = self.macros[d.target]  # type: ignore[index]
                target.starting |= source.starting
                while source.book.state.held:
                    request = source.book.state.held.popleft()
                    self._owner[request.id] = (target.book, request)
                    self._carry_out(target.book, target.book.submit(request, self.loop.now))
                if d.remove:
                    self._drain(d.target, d.remove)  # type: ignore[arg-type]

    def _drain(self, macro: str, count: int) -> None:
        """Stop routing to the least-loaded members; each leaves once its requests are done."""
        members = self.macros[macro].members.values()
        for inst in sorted((i for i in members if i.id not in self.draining), key=lambda i: len(i.engine))[:count]:
            self.draining.add(inst.id)
            self.macros[macro].book.state.instance(inst.id).accepting = False
            if len(inst.engine) == 0:
                self._retire(inst.id)

    def _retire(self, instance_id: str) -> None:
        self.draining.discard(instance_id)
        macro = self.macros[self._macro_of.pop(instance_id)]
        macro.members.pop(instance_id)
        del self.instances[instance_id]
        self._carry_out(macro.book, macro.book.remove_instance(instance_id, self.loop.now))
