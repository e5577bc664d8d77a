"""The router's cost, measured in one run: TTFT through the router minus TTFT straight to a worker, and the
streaming throughput one router process sustains, with instant-response workers so the router is the
bottleneck. The same workload goes both ways; the figures are only comparable within one run."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .client import RequestResult, run_load
from .report import Stats
from .workload import WorkloadRequest, arrival_times


@dataclass(frozen=True, slots=True)
class PathResult:
    """One endpoint's figures for one phase."""

    ok: int
    failed: int
    ttft: Stats | None
    duration: float
    output_tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.duration if self.duration > 0 else 0.0

    @classmethod
    def of(cls, results: Sequence[RequestResult]) -> PathResult:
        ok = [r for r in results if r.outcome == "ok"]
        ends = [r.end for r in results if r.end is not None]
        starts = [r.sent for r in results if r.sent is not None]
        duration = (max(ends) - min(starts)) if ends and starts else 0.0
        ttft = Stats.of(r.ttft for r in ok if r.ttft is not None)
        return cls(len(ok), len(results) - len(ok), ttft, duration, sum(r.tokens for r in ok))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "failed": self.failed,
            "ttft": self.ttft.to_json() if self.ttft else None,
            "duration_s": self.duration,
            "output_tokens": self.output_tokens,
            "tokens_per_second": self.tokens_per_second,
        }


def poisson_workload(count: int, rate: float, prompt: int, output: int, seed: int) -> list[WorkloadRequest]:
    times = arrival_times(rate, np.random.default_rng(seed), count=count)
    return [WorkloadRequest(float(t), prompt, output) for t in times]


def burst_workload(count: int, prompt: int, output: int) -> list[WorkloadRequest]:
    return [WorkloadRequest(0.0, prompt, output) for _ in range(count)]


async def measure(
    direct_url: str,
    router_url: str,
    latency: Sequence[WorkloadRequest],
    burst: Sequence[WorkloadRequest],
    timeout: float = 120.0,
) -> dict[str, PathResult]:
    """Latency phase (light load) and throughput phase (a burst), each direct then through the router."""
    return {
        "latency_direct": PathResult.of(await run_load(direct_url, latency, timeout=timeout)),
        "latency_router": PathResult.of(await run_load(router_url, latency, timeout=timeout)),
        "burst_direct": PathResult.of(await run_load(direct_url, burst, timeout=timeout)),
        "burst_router": PathResult.of(await run_load(router_url, burst, timeout=timeout)),
    }


def added_latency(results: dict[str, PathResult]) -> dict[str, float | None]:
    """p50 and p99 TTFT through the router minus direct, in seconds."""
    direct, routed = results["latency_direct"].ttft, results["latency_router"].ttft
    if direct is None or routed is None:
        return {"p50": None, "p99": None}
    return {"p50": routed.p50 - direct.p50, "p99": routed.p99 - direct.p99}


def format_table(results: dict[str, PathResult]) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:9.2f}"

    lines = [f"{'phase':<16}{'ok':>6}{'failed':>8}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}{'tokens/s':>11}"]
    for name, r in results.items():
        p50 = r.ttft.p50 if r.ttft else None
        p99 = r.ttft.p99 if r.ttft else None
        lines.append(f"{name:<16}{r.ok:>6}{r.failed:>8}{ms(p50):>13}{ms(p99):>13}{r.tokens_per_second:>11.0f}")
    added = added_latency(results)
    lines.append(f"added TTFT by the router: p50 {ms(added['p50']).strip()} ms, p99 {ms(added['p99']).strip()} ms")
    return "\n".join(lines)
