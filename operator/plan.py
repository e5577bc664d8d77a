"""What one reconcile pass does to a macro instance's worker pods, decided purely from the pods the API server
listed: create missing indices, replace failed pods, drain the highest indices on scale-down and delete a
drained pod once it is idle or its drain deadline has passed. The kopf handlers only carry the plan out, so a
restart of the operator re-derives the same plan from the same pods (idempotent) and never duplicates one."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .labels import DRAINING, INSTANCE_INDEX

Manifest = dict[str, Any]
DRAIN_DEADLINE = "ecoserve.io/drain-deadline"


def pod_index(pod: Manifest) -> int:
    try:
        return int((pod["metadata"].get("labels") or {})[INSTANCE_INDEX])
    except (KeyError, ValueError):
        return -1


def is_draining(pod: Manifest) -> bool:
    return (pod["metadata"].get("labels") or {}).get(DRAINING) == "true"


def is_terminating(pod: Manifest) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


def is_failed(pod: Manifest) -> bool:
    """A pod that will not serve again by itself: it exited (restartPolicy Always makes that rare) or was evicted."""
    return (pod.get("status") or {}).get("phase") in ("Failed", "Succeeded")


def is_ready(pod: Manifest) -> bool:
    if is_terminating(pod) or is_failed(pod):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def drain_deadline(pod: Manifest) -> datetime | None:
    text = (pod["metadata"].get("annotations") or {}).get(DRAIN_DEADLINE)
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


@dataclass(slots=True)
class PodPlan:
    create: list[int] = field(default_factory=list)  # instance indices to start a pod for
    drain: list[str] = field(default_factory=list)  # pod names to mark draining (routers stop using them)
    undrain: list[str] = field(default_factory=list)  # draining pods wanted again (scale back up mid-drain)
    delete: list[tuple[str, str]] = field(default_factory=list)  # (pod name, reason)

    @property
    def empty(self) -> bool:
        return not (self.create or self.drain or self.undrain or self.delete)


def plan_pods(instances: int, pods: list[Manifest], now: datetime, idle: frozenset[str] = frozenset()) -> PodPlan:
    """`pods`: every worker pod of the macro instance; `idle`: draining pods whose worker has no request left."""
    plan = PodPlan()
    serving: dict[int, Manifest] = {}
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        name, index = pod["metadata"]["name"], pod_index(pod)
        if is_terminating(pod):
            continue
        if is_failed(pod):
            plan.delete.append((name, "failed"))
        elif is_draining(pod):
            if 0 <= index < instances and index not in serving:
                plan.undrain.append(name)
                serving[index] = pod
            else:
                deadline = drain_deadline(pod)
                if name in idle:
                    plan.delete.append((name, "drained"))
                elif deadline is None or now >= deadline:
                    plan.delete.append((name, "drain timeout"))
        elif index < 0 or index in serving:
            plan.delete.append((name, "duplicate index" if index >= 0 else "no instance index"))
        elif index >= instances:
            plan.drain.append(name)
        else:
            serving[index] = pod
    plan.create = [i for i in range(instances) if i not in serving]
    return plan


def utcnow() -> datetime:
    return datetime.now(UTC)
