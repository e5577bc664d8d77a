"""Label keys on every object the operator makes: routers find their workers and the gateway its routers
by these, and a pod moves between macro instances by relabeling alone (no restart)."""

from __future__ import annotations

from enum import StrEnum

GROUP = "ecoserve.io/group"
MACRO_INSTANCE = "ecoserve.io/macroinstance"
ROLE = "ecoserve.io/role"
INSTANCE_INDEX = "ecoserve.io/instance-index"
# A worker being drained: routers stop sending it requests; the operator deletes it once idle or timed out.
DRAINING = "ecoserve.io/draining"


class Role(StrEnum):
    WORKER = "worker"
    ROUTER = "router"
    GATEWAY = "gateway"


def selector(**labels: str) -> str:
    """A Kubernetes label selector string (`k=v,k=v`) in a stable order."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def member_selector(macro_instance: str) -> str:
    """Every worker pod of one macro instance, draining ones included: what the operator reconciles."""
    return selector(**{MACRO_INSTANCE: macro_instance, ROLE: Role.WORKER.value})


def worker_selector(macro_instance: str) -> str:
    """The serving workers of one macro instance: what its router routes to and the scale subresource counts."""
    return f"{member_selector(macro_instance)},{DRAINING}!=true"
