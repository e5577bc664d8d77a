"""How a mitosis decision becomes Kubernetes writes, decided purely from what the API server listed: which worker
pods move in a split or merge and their new labels and owner, the sibling MacroInstance a split creates, and
the `status.lastScaling` record that every action leaves (also how the autoscaler tells its own spec changes
from a user's: it remembers the generation its own write produced)."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from ecoserve.brain.mitosis import ScalingDecision

from .children import API_VERSION, KIND, owner_reference
from .labels import INSTANCE_INDEX, MACRO_INSTANCE
from .plan import is_draining, is_terminating, pod_index

Manifest = dict[str, Any]
SPLIT_FROM = "ecoserve.io/split-from"  # annotation on a sibling: the macro instance it split from


def serving_pods(pods: list[Manifest]) -> list[Manifest]:
    """Worker pods that serve (not draining, not terminating), by instance index."""
    return sorted((p for p in pods if not is_draining(p) and not is_terminating(p)), key=pod_index)


def movers(pods: list[Manifest], count: int) -> list[Manifest]:
    """The `count` serving pods with the highest indices: the source keeps 0..n-count-1, as a scale-down would."""
    serving = serving_pods(pods)
    return serving[len(serving) - count :] if count > 0 else []


def move_patch(destination: Manifest, index: int) -> Manifest:
    """A pod's new membership: the destination's labels and controller reference, and its place in it. The pod
    keeps running (same uid, same process): the routers' label selectors do the rest."""
    return {
        "metadata": {
            "labels": {MACRO_INSTANCE: destination["metadata"]["name"], INSTANCE_INDEX: str(index)},
            "ownerReferences": [owner_reference(destination)],
        }
    }


def sibling(source: Manifest, name: str, instances: int) -> Manifest:
    """A split's new MacroInstance: the source's spec (same group, model, engine, SLO) at `instances`."""
    spec = copy.deepcopy(source["spec"]) | {"instances": instances}
    meta = source["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": dict(meta.get("labels") or {}),
            "annotations": {SPLIT_FROM: meta["name"]},
        },
        "spec": spec,
    }


def scaling_record(
    action: str,
    reason: str,
    message: str,
    now: datetime,
    instances: int,
    generation: int,
    decision: ScalingDecision | None = None,
    sizes: dict[str, int] | None = None,
) -> dict[str, Any]:
    """`status.lastScaling` of one MacroInstance: what, why, the figures that triggered it and the group's sizes
    after it (for a planner's `decision`), and this resource's `spec.instances`/generation as the autoscaler
    left them."""
    record: dict[str, Any] = {
        "time": now.isoformat(),
        "action": action,
        "reason": reason,
        "message": message,
        "instances": instances,
        "generation": generation,
    }
    if decision is not None:
        record["figures"] = dict(decision.figures)
        record |= {k: v for k, v in (("target", decision.target), ("source", decision.source)) if v}
    if sizes is not None:
        record["sizes"] = dict(sorted(sizes.items()))
    return record


def last_scaling(cr: Manifest) -> dict[str, Any]:
    return (cr.get("status") or {}).get("lastScaling") or {}


def last_change(crs: list[Manifest]) -> datetime | None:
    """The latest scaling action (or noticed manual change) in a group: its cooldown runs from here."""
    times = []
    for cr in crs:
        text = last_scaling(cr).get("time")
        if not text:
            continue
        try:
            times.append(datetime.fromisoformat(text))
        except ValueError:
            continue
    return max(times, default=None)


def changed_by_hand(cr: Manifest) -> bool:
    """The spec changed since the autoscaler's last write (kubectl edit/scale, an HPA through the scale
    subresource): every spec write bumps `metadata.generation`, and the autoscaler records the one it made.
    A resource it never touched counts from its creation (generation 1)."""
    expected = int(last_scaling(cr).get("generation") or 1)
    return int(cr["metadata"].get("generation") or 1) != expected
