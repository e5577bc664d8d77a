"""Mitosis scaling of a group of MacroInstances: every `spec.autoscaling.intervalSeconds` the group's leader (its
first autoscaled MacroInstance by name) reads each router's `/ecoserve/status`, runs the brain's
MitosisPlanner on those figures and carries out its one step:

- grow / shrink: `spec.instances` +/- 1 (the reconcile pass starts a pod, or drains the highest index);
- split: a sibling MacroInstance (`GROUP-2`, ...) is created and the source's highest-index worker pods are
  relabeled into it and re-owned; they keep running (same uid, model stays loaded), both routers follow the
  label change, and requests in flight finish on their old route;
- merge: the smaller macro instance's pods are relabeled into the other, which takes their count (less the
  ones the merge releases), and the empty MacroInstance is deleted.

Every action is an Event and `status.lastScaling` on each MacroInstance it touched. A spec changed by anyone
else (kubectl, an HPA on the scale subresource) is recorded as a manual change and starts the cooldown, so
the autoscaler never fights it; `autoscaling.enabled: false` keeps a MacroInstance out of all of this.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
from pydantic import ValidationError

from ecoserve.brain.mitosis import (
    Action,
    MacroObservation,
    MitosisPlanner,
    MitosisSettings,
    ScalingDecision,
    apply_to_sizes,
    sibling_name,
)
from ecoserve.brain.state import SLO

from . import metrics
from .children import API_VERSION, KIND, read_spec, router_endpoint
from .kube import Kube, Manifest
from .labels import member_selector
from .plan import is_draining, is_terminating, utcnow
from .reconcile import EventFn
from .scaling import changed_by_hand, last_change, move_patch, movers, scaling_record, serving_pods, sibling
from .spec import MacroInstanceSpec

log = logging.getLogger("ecoserve.operator.autoscale")
StatusFetch = Callable[[str], dict[str, Any] | None]
LockFor = Callable[[str, str], AbstractContextManager[Any]]


def fetch_status(base_url: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """A router's `/ecoserve/status`, or None when it cannot be read (the group then skips this round)."""
    try:
        resp = httpx.get(f"{base_url}/ecoserve/status", timeout=timeout)
        data = resp.json() if resp.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def mitosis_settings(spec: MacroInstanceSpec) -> MitosisSettings:
    slo = SLO(ttft=spec.slo.ttft_ms / 1000, tpot=spec.slo.tpot_ms / 1000, attainment=spec.slo.attainment)
    return MitosisSettings(
        slo,
        spec.min_instances,
        spec.max_instances,
        spec.autoscaling.max_total_instances,
        cooldown=float(spec.autoscaling.cooldown_seconds),
        sizing=spec.autoscaling.sizing,
        max_grow_step=spec.autoscaling.max_grow_step,
    )


@dataclass(slots=True)
class _Group:
    planner: MitosisPlanner
    last_plan: float | None = None


@dataclass
class Autoscaler:
    kube: Kube
    event: EventFn
    lock: LockFor  # the per-MacroInstance lock reconcile passes take: no pass sees a split or merge half done
    router_url: Callable[[str, str], str] = router_endpoint  # (name, namespace) -> the router's base URL
    fetch: StatusFetch = fetch_status
    clock: Callable[[], datetime] = utcnow
    _groups: dict[tuple[str, str], _Group] = field(default_factory=dict)
    _group_locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def tick(self, namespace: str, name: str) -> ScalingDecision | None:
        """Called often for every MacroInstance; plans only for a group's leader, once per interval. Returns
        the decision taken (None when it was not this resource's turn or a router could not be read)."""
        cr = self.kube.get(API_VERSION, KIND, namespace, name)
        if cr is None or cr["metadata"].get("deletionTimestamp"):
            return None
        spec = read_spec(cr)
        if not spec.autoscaling.enabled:
            return None
        group_name = spec.group
        group = self._autoscaled_group(namespace, group_name)
        if not group or group[0]["metadata"]["name"] != name:
            return None
        with self._group_lock(namespace, group_name):
            group = self._autoscaled_group(namespace, group_name)  # as it is now that we hold the group
            if not group or group[0]["metadata"]["name"] != name:
                return None
            return self._plan(namespace, group)

    def _autoscaled_group(self, namespace: str, group: str) -> list[Manifest]:
        out = []
        for cr in self.kube.list(API_VERSION, KIND, namespace):
            if cr["metadata"].get("deletionTimestamp"):
                continue
            try:
                spec = read_spec(cr)
            except (ValidationError, ValueError):
                continue  # reported by its own reconcile pass
            if spec.group == group and spec.autoscaling.enabled:
                out.append(cr)
        return sorted(out, key=lambda c: c["metadata"]["name"])

    def _group_lock(self, namespace: str, group: str) -> threading.Lock:
        with self._guard:
            return self._group_locks.setdefault((namespace, group), threading.Lock())

    def _plan(self, namespace: str, group: list[Manifest]) -> ScalingDecision | None:
        now = self.clock()
        manual = [cr for cr in group if changed_by_hand(cr)]
        for cr in manual:
            self._record_manual(cr, now)
        if manual:  # read the records back: the cooldown runs from them
            group = self._autoscaled_group(namespace, read_spec(group[0]).group)
        leader = read_spec(group[0])
        key = (namespace, leader.group)
        settings = mitosis_settings(leader)
        state = self._groups.get(key)
        if state is None or state.planner.settings != settings:
            state = self._groups[key] = _Group(MitosisPlanner(settings))
        t = now.timestamp()
        if state.last_plan is not None and t - state.last_plan < leader.autoscaling.interval_seconds:
            return None
        state.last_plan = t
        observations = []
        for cr in group:
            name = cr["metadata"]["name"]
            status = self.fetch(self.router_url(name, namespace))
            if status is None or not isinstance(status.get("planner"), dict):
                log.warning(f"{namespace}/{name}: router status unreadable; group {leader.group} skips this round")
                return None
            try:
                observations.append(MacroObservation.from_json(name, read_spec(cr).instances, status["planner"]))
            except ValueError as err:
                log.warning(f"{namespace}/{name}: bad router status ({err}); group {leader.group} skips this round")
                return None
        changed = last_change(group)
        decision = state.planner.plan(observations, t, changed.timestamp() if changed else None)
        if decision.action is not Action.NONE:
            self._carry_out(namespace, group, observations, decision, now)
        return decision

    def _record_manual(self, cr: Manifest, now: datetime) -> None:
        meta, instances = cr["metadata"], int(cr["spec"].get("instances", 1))
        message = f"spec changed outside the autoscaler (instances={instances}): cooldown starts"
        reason = "spec_changed_outside_the_autoscaler"
        self._write_record(cr, scaling_record("manual", reason, message, now, instances, meta.get("generation") or 1))
        self.event(cr, "Normal", "ManualScaling", message)

    # --- carrying a decision out ---------------------------------------------------------------------------

    def _carry_out(
        self,
        namespace: str,
        group: list[Manifest],
        observations: list[MacroObservation],
        d: ScalingDecision,
        now: datetime,
    ) -> None:
        by_name = {cr["metadata"]["name"]: cr for cr in group}
        taken = {cr["metadata"]["name"] for cr in self.kube.list(API_VERSION, KIND, namespace)}
        new_name = sibling_name(read_spec(group[0]).group, taken)
        sizes = apply_to_sizes({o.name: o.size for o in observations}, d, new_name)
        figures = ", ".join(f"{k}={v:g}" for k, v in d.figures)
        touched: list[Manifest] = []
        sibling_lock = new_name if d.action is Action.SPLIT else None
        with self._locks(namespace, [n for n in (d.target, d.source, sibling_lock) if n]):
            match d.action:
                case Action.GROW | Action.SHRINK:
                    assert d.target is not None
                    touched.append(self._set_instances(by_name[d.target], sizes[d.target]))
                    what = f"{d.action.value} {d.target} to {sizes[d.target]} instances"
                case Action.SPLIT:
                    assert d.target is not None
                    touched += self._split(by_name[d.target], new_name, d.move, sizes)
                    what = f"split {d.target}: {d.move} worker pods move to new {new_name} (+1 new)"
                case Action.MERGE:
                    assert d.target is not None and d.source is not None
                    touched.append(self._merge(by_name[d.source], by_name[d.target], sizes[d.target]))
                    what = f"merge {d.source} into {d.target} ({sizes[d.target]} instances, {d.remove} released)"
        message = f"{what} ({d.reason}: {figures})" if figures else f"{what} ({d.reason})"
        metrics.SCALING_ACTIONS.labels(d.action.value).inc()
        log.info(f"{namespace}/{read_spec(group[0]).group}: {message}")
        for cr in touched:
            meta = cr["metadata"]
            instances, generation = int(cr["spec"]["instances"]), int(meta.get("generation") or 1)
            record = scaling_record(d.action.value, d.reason, message, now, instances, generation, d, sizes)
            self._write_record(cr, record)
            self.event(cr, "Normal", d.action.value.capitalize(), message)

    @contextmanager
    def _locks(self, namespace: str, names: list[str]) -> Iterator[None]:
        with ExitStack() as stack:
            for name in sorted(set(names)):  # one order everywhere: no deadlock between two actions
                stack.enter_context(self.lock(namespace, name))
            yield

    def _set_instances(self, cr: Manifest, instances: int) -> Manifest:
        meta = cr["metadata"]
        return self.kube.patch(API_VERSION, KIND, meta["namespace"], meta["name"], {"spec": {"instances": instances}})

    def _move(self, pods: list[Manifest], destination: Manifest, first_index: int) -> None:
        for k, pod in enumerate(pods):
            patch = move_patch(destination, first_index + k)
            self.kube.patch("v1", "Pod", destination["metadata"]["namespace"], pod["metadata"]["name"], patch)
            metrics.POD_ACTIONS.labels("moved").inc()

    def _split(self, source: Manifest, new_name: str, move: int, sizes: dict[str, int]) -> list[Manifest]:
        namespace, name = source["metadata"]["namespace"], source["metadata"]["name"]
        created = self.kube.create(sibling(source, new_name, sizes[new_name]))
        self._move(movers(self.kube.list("v1", "Pod", namespace, member_selector(name)), move), created, 0)
        return [self._set_instances(source, sizes[name]), created]

    def _merge(self, source: Manifest, target: Manifest, instances: int) -> Manifest:
        namespace = source["metadata"]["namespace"]
        pods = self.kube.list("v1", "Pod", namespace, member_selector(source["metadata"]["name"]))
        # Serving pods join after the target's own; draining ones after those, so they finish draining there.
        moving = serving_pods(pods)
        draining = [p for p in pods if is_draining(p) and not is_terminating(p)]
        self._move([*moving, *draining], target, int(target["spec"]["instances"]))
        merged = self._set_instances(target, instances)
        self.kube.delete(API_VERSION, KIND, namespace, source["metadata"]["name"])
        return merged

    def _write_record(self, cr: Manifest, record: dict[str, Any]) -> None:
        meta = cr["metadata"]
        body = {"status": {"lastScaling": record}}
        self.kube.patch(API_VERSION, KIND, meta["namespace"], meta["name"], body, subresource="status")
