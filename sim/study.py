"""A goodput study: every strategy's goodput on the same deployment and workload, with the ratios."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ecoserve.bench.workload import WorkloadRequest

from .goodput import search_goodput
from .results import RunSummary
from .setup import Deployment
from .strategies import Evaluation, evaluate, retimed

Progress = Callable[[str, RunSummary], None]


@dataclass(frozen=True, slots=True)
class StrategyResult:
    name: str
    goodput: float
    evaluations: tuple[RunSummary, ...]
    events: int
    wall: float
    prefill_instances: int | None = None  # mooncake's chosen split

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "goodput": self.goodput,
            "events": self.events,
            "wall_s": self.wall,
            "evaluations": [e.to_json() for e in sorted(self.evaluations, key=lambda e: e.rate)],
        }
        if self.prefill_instances is not None:
            out["prefill_instances"] = self.prefill_instances
        return out


def _search(
    name: str,
    deployment: Deployment,
    base: Sequence[WorkloadRequest],
    start: float,
    progress: Progress,
    prefill_instances: int | None = None,
) -> StrategyResult:
    cost = {"events": 0, "wall": 0.0}

    def run(rate: float) -> RunSummary:
        e: Evaluation = evaluate(name, deployment, retimed(base, rate), rate, prefill_instances)
        cost["events"] += e.events
        cost["wall"] += e.wall
        progress(name if prefill_instances is None else f"{name} P={prefill_instances}", e.summary)
        return e.summary

    found = search_goodput(run, deployment.slo.attainment, start=start)
    return StrategyResult(name, found.goodput, found.evaluations, cost["events"], cost["wall"], prefill_instances)


def goodput_study(
    strategies: Sequence[str],
    deployment: Deployment,
    base: Sequence[WorkloadRequest],
    progress: Progress,
    start: float = 1.0,
) -> list[StrategyResult]:
    """Each strategy's goodput; each search starts from the previous goodput to save doublings."""
    results: list[StrategyResult] = []
    for name in strategies:
        begin = results[-1].goodput if results and results[-1].goodput > 0 else start
        if name == "mooncake":
            results.append(_best_split(deployment, base, begin, progress))
        else:
            results.append(_search(name, deployment, base, begin, progress))
    return results


def _best_split(
    deployment: Deployment, base: Sequence[WorkloadRequest], start: float, progress: Progress
) -> StrategyResult:
    """MoonCake picks the prefill:decode split with the best goodput: hill-climb from half and half (goodput is
    unimodal in the split: too few prefill instances starve TTFT, too few decode instances TPOT)."""
    tried: dict[int, StrategyResult] = {}

    def at(p: int) -> StrategyResult:
        if p not in tried:
            tried[p] = _search("mooncake", deployment, base, start, progress, p)
        return tried[p]

    best = max(deployment.instances // 2, 1)
    while True:
        neighbours = [p for p in (best - 1, best + 1) if 1 <= p < deployment.instances]
        better = [p for p in neighbours if at(p).goodput > at(best).goodput]
        if not better:
            break
        best = max(better, key=lambda p: at(p).goodput)
    chosen = at(best)
    return StrategyResult(
        "mooncake",
        chosen.goodput,
        chosen.evaluations,
        sum(r.events for r in tried.values()),
        sum(r.wall for r in tried.values()),
        best,
    )


def ratios(results: Sequence[StrategyResult]) -> dict[str, dict[str, float | None]]:
    """Each strategy's goodput over each other's (None when the other's is 0)."""
    return {
        a.name: {b.name: (a.goodput / b.goodput if b.goodput > 0 else None) for b in results if b is not a}
        for a in results
    }
