"""Label keys on every object the operator makes: routers find their workers and the gateway its routers
by these, and a pod moves between macro instances by relabeling alone (no restart)."""

from __future__ import annotations

from enum import StrEnum

GROUP = "ecoserve.io/group"
MACRO_INSTANCE = "ecoserve.io/macroinstance"
ROLE = "ecoserve.io/role"
INSTANCE_INDEX = "ecoserve.io/instance-index"


class Role(StrEnum):
    WORKER = "worker"
    ROUTER = "router"
    GATEWAY = "gateway"


def selector(**labels: str) -> str:
    """A Kubernetes label selector string (`k=v,k=v`) in a stable order."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def worker_selector(macro_instance: str) -> str:
    """The workers of one macro instance, as its router watches them."""
    return selector(**{MACRO_INSTANCE: macro_instance, ROLE: Role.WORKER.value})
