"""The dynamic scenario: load ramping in steps with the mitosis planner in the loop (EcoServe's Fig. 13).

Reports, per window of arrival time, the offered rate, the SLO attainment of the requests that arrived in
it, and the instances serving at its end, plus every scaling step (grow, shrink, split, merge) with the
group's sizes after it, and the run's totals: attainment over every request and instance-seconds (the GPU
cost), so that two planner settings compare side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecoserve.bench.workload import WorkloadRequest, arrival_times

from .core import RequestRecord
from .ecoserve import EcoServeCluster, MitosisRun, ScalingEvent
from .results import meets
from .setup import Deployment


def ramp_workload(
    rates: Sequence[float], step_seconds: float, lengths: Sequence[WorkloadRequest], seed: int
) -> list[WorkloadRequest]:
    """Poisson arrivals at `rates[k]` during step k; prompt and output lengths taken in turn from `lengths`."""
    rng = np.random.default_rng(seed)
    out: list[WorkloadRequest] = []
    for k, rate in enumerate(rates):
        start = k * step_seconds
        times = arrival_times(rate, rng, duration=step_seconds)
        for t in times:
            w = lengths[len(out) % len(lengths)]
            out.append(WorkloadRequest(start + float(t), w.prompt_tokens, w.output_tokens))
    return out


@dataclass(frozen=True, slots=True)
class WindowRow:
    start: float
    offered_rate: float
    arrived: int
    attainment: float | None
    instances: int
    macros: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class RampReport:
    windows: tuple[WindowRow, ...]
    events: tuple[ScalingEvent, ...]
    requests: int
    failed: int  # rejected, or never finished
    met: int  # requests that met both SLOs
    instance_seconds: float  # instances serving, sampled at each window's end, times the window

    @property
    def attainment(self) -> float:
        return self.met / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "failed": self.failed,
            "attainment": self.attainment,
            "instance_seconds": self.instance_seconds,
            "windows": [
                {
                    "start_s": w.start,
                    "offered_rate": w.offered_rate,
                    "arrived": w.arrived,
                    "attainment": w.attainment,
                    "instances": w.instances,
                    "macro_instances": dict(w.macros),
                }
                for w in self.windows
            ],
            "scaling": [
                {
                    "time_s": e.time,
                    "action": e.decision.action.value,
                    "target": e.decision.target,
                    "source": e.decision.source,
                    "reason": e.decision.reason,
                    "add": e.decision.add,
                    "sizes": dict(e.sizes),
                }
                for e in self.events
            ],
        }

    def format_table(self) -> str:
        lines = [f"{'window':>10}{'offered':>9}{'arrived':>9}{'attain':>8}{'instances':>11}  macro instances"]
        for w in self.windows:
            att = "-" if w.attainment is None else f"{w.attainment:.1%}"
            sizes = " ".join(f"{n}:{s}" for n, s in w.macros)
            lines.append(f"{w.start:>9.0f}s{w.offered_rate:>9.1f}{w.arrived:>9}{att:>8}{w.instances:>11}  {sizes}")
        lines.append("scaling:")
        for e in self.events:
            d = e.decision
            what = d.action.value + (f" {d.source} into" if d.source else "") + f" {d.target}"
            what += f" +{d.add}" if d.add else ""
            serving = " ".join(f"{n}:{s}" for n, s in e.sizes)
            lines.append(f"  {e.time:>7.0f}s {what} ({d.reason}); serving then {serving}")
        splits = sum(e.decision.action.value == "split" for e in self.events)
        merges = sum(e.decision.action.value == "merge" for e in self.events)
        lines.append(f"{self.requests} requests, {self.failed} failed; {splits} splits, {merges} merges")
        lines.append(f"attainment {self.attainment:.1%} over every request; {self.instance_seconds:,.0f} instance-s")
        return "\n".join(lines)


def format_comparison(runs: Sequence[tuple[str, RampReport]]) -> str:
    """One line per run: what each setting bought (attainment) and what it cost (instance-seconds)."""
    lines = [f"{'run':<16}{'attainment':>11}{'met':>8}{'failed':>8}{'instance-s':>12}{'steps':>7}  worst window"]
    for name, r in runs:
        worst = min((w.attainment for w in r.windows if w.attainment is not None), default=None)
        worst_text = "-" if worst is None else f"{worst:.1%}"
        lines.append(
            f"{name:<16}{r.attainment:>11.1%}{r.met:>8}{r.failed:>8}{r.instance_seconds:>12,.0f}"
            f"{len(r.events):>7}  {worst_text}"
        )
    return "\n".join(lines)


def run_ramp(
    deployment: Deployment,
    mitosis: MitosisRun,
    rates: Sequence[float],
    step_seconds: float,
    lengths: Sequence[WorkloadRequest],
    window: float = 30.0,
    seed: int = 0,
) -> RampReport:
    workload = ramp_workload(rates, step_seconds, lengths, seed)
    cluster = EcoServeCluster(deployment, mitosis)
    horizon = len(rates) * step_seconds
    samples: list[tuple[int, tuple[tuple[str, int], ...]]] = []

    def sample(_: object) -> None:
        sizes = tuple((m.name, len(m.members)) for m in cluster.macros.values())
        samples.append((sum(s for _, s in sizes), sizes))

    for k in range(1, int(horizon // window) + 1):
        cluster.loop.at(k * window, sample)
    records = cluster.run(workload)
    rows = []
    for k, (instances, sizes) in enumerate(samples):
        start = k * window
        arrived = [r for r in records if start <= r.arrival < start + window]
        attainment = sum(meets(r, deployment.slo) for r in arrived) / len(arrived) if arrived else None
        rate = rates[min(int(start // step_seconds), len(rates) - 1)]
        rows.append(WindowRow(start, rate, len(arrived), attainment, instances, sizes))
    failed = sum(1 for r in records if _failed(r))
    met = sum(meets(r, deployment.slo) for r in records)
    instance_seconds = sum(row.instances for row in rows) * window
    return RampReport(tuple(rows), tuple(cluster.events), len(records), failed, met, instance_seconds)


def _failed(record: RequestRecord) -> bool:
    return record.rejected or record.finish is None
