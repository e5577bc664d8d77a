"""Strategies by name, and one evaluation of a strategy at a request rate."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ecoserve.bench.workload import WorkloadRequest
from ecoserve.brain.macro import SlackAggregate
from ecoserve.brain.state import KVReservation

from .colocated import sarathi, vllm, vllm_mixed
from .core import Cluster
from .disagg import DisaggregatedCluster, distserve
from .ecoserve import EcoServeCluster
from .results import RunSummary, summarize
from .setup import Deployment

BASELINES: dict[str, Callable[[Deployment], Cluster]] = {
    "vllm": vllm,
    "vllm-mixed": vllm_mixed,
    "sarathi": sarathi,
    "distserve": distserve,
}
HELP = (
    "ecoserve (PaDG; variants ecoserve-mean, ecoserve-max, ecoserve-quantile, each with an optional -prompt for "
    "prompt-only KV checks), vllm, vllm-mixed, sarathi (NoDG), distserve, mooncake (FuDG; mooncake searches "
    "the prefill:decode split)"
)


def parse_strategy(name: str) -> str:
    """Validate a strategy name (see HELP); returns it unchanged."""
    if name in BASELINES or name == "mooncake":
        return name
    parts = name.split("-")
    if parts[0] != "ecoserve" or len(parts) > 3:
        raise ValueError(f"unknown strategy {name!r}; one of {HELP}")
    rest = parts[1:]
    if rest and rest[-1] == "prompt":
        rest = rest[:-1]
    if rest and rest[0] not in {a.value for a in SlackAggregate}:
        raise ValueError(f"unknown slack aggregate in {name!r}: one of {', '.join(a.value for a in SlackAggregate)}")
    return name


def ecoserve_deployment(name: str, deployment: Deployment) -> Deployment:
    parts = name.split("-")[1:]
    changes: dict[str, object] = {}
    if parts and parts[-1] == "prompt":
        changes["kv_reservation"] = KVReservation.PROMPT
        parts = parts[:-1]
    if parts:
        changes["slack_aggregate"] = SlackAggregate(parts[0])
    return dataclasses.replace(deployment, **changes)


def make_cluster(name: str, deployment: Deployment, prefill_instances: int | None = None) -> Cluster:
    if name.startswith("ecoserve"):
        return EcoServeCluster(ecoserve_deployment(name, deployment))
    if name == "mooncake":
        return DisaggregatedCluster(deployment, prefill_instances or max(deployment.instances // 2, 1))
    return BASELINES[name](deployment)


@dataclass(frozen=True, slots=True)
class Evaluation:
    summary: RunSummary
    events: int
    wall: float


def retimed(base: Sequence[WorkloadRequest], rate: float) -> list[WorkloadRequest]:
    """A rate-1 workload at `rate`: the same draws, scaled in time (common random numbers across rates)."""
    return [WorkloadRequest(w.arrival / rate, w.prompt_tokens, w.output_tokens) for w in base]


def evaluate(
    name: str,
    deployment: Deployment,
    workload: Sequence[WorkloadRequest],
    rate: float,
    prefill_instances: int | None = None,
) -> Evaluation:
    cluster = make_cluster(name, deployment, prefill_instances)
    started = time.perf_counter()
    records = cluster.run(workload)
    wall = time.perf_counter() - started
    return Evaluation(summarize(records, deployment.slo, rate), cluster.loop.events, wall)
