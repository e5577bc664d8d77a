"""The MacroInstance status from its worker pods: counts, phase and conditions (pure; the handler patches it).

Phases: Pending (no worker ready yet), Scaling (pods being added or drained), Degraded (fewer ready workers than
wanted once started, e.g. a pod failed), Running (every wanted worker ready). Condition transition times are
kept from the previous status when a condition's status does not change, as Kubernetes conventions ask."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .children import router_endpoint
from .labels import worker_selector
from .plan import PodPlan, is_draining, is_ready, is_terminating

Manifest = dict[str, Any]


def _condition(kind: str, ok: bool, reason: str, message: str, previous: list[dict], now: datetime) -> dict:
    status = "True" if ok else "False"
    before = next((c for c in previous if c.get("type") == kind), None)
    since = before["lastTransitionTime"] if before and before.get("status") == status else now.isoformat()
    return {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": since}


def macro_status(cr: Manifest, pods: list[Manifest], plan: PodPlan, now: datetime) -> dict[str, Any]:
    meta, spec = cr["metadata"], cr.get("spec") or {}
    wanted = int(spec.get("instances", 1))
    serving = [p for p in pods if not is_draining(p) and not is_terminating(p)]
    ready = sum(map(is_ready, serving))
    draining = sum(1 for p in pods if is_draining(p) and not is_terminating(p))
    failed = [name for name, reason in plan.delete if reason == "failed"]
    scaling = bool(plan.create or plan.drain or draining) and not failed
    if ready == 0 and not failed:
        phase = "Pending"
    elif scaling or len(serving) != wanted:
        phase = "Scaling"
    elif ready < wanted:
        phase = "Degraded"
    else:
        phase = "Running"
    previous = (cr.get("status") or {}).get("conditions") or []
    progress = f"{len(serving)}/{wanted} workers, {ready} ready, {draining} draining"
    conditions = [
        _condition("Ready", ready >= wanted, "AllWorkersReady" if ready >= wanted else "WorkersNotReady",
                   progress, previous, now),
        _condition("Progressing", phase in ("Pending", "Scaling"),
                   "Scaling" if phase in ("Pending", "Scaling") else "Stable", progress, previous, now),
        _condition("Degraded", bool(failed) or phase == "Degraded",
                   "WorkerFailed" if failed else ("WorkersNotReady" if phase == "Degraded" else "AsExpected"),
                   f"failed: {', '.join(failed)}" if failed else progress, previous, now),
    ]  # fmt: skip
    return {
        "instances": len(serving),
        "readyInstances": ready,
        "selector": worker_selector(meta["name"]),
        "phase": phase,
        "routerEndpoint": router_endpoint(meta["name"], meta["namespace"]),
        "observedGeneration": meta.get("generation", 0),
        "conditions": conditions,
    }
