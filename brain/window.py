"""SLO statistics over a sliding time window: what the router reports and the mitosis planner reads.

Pure and clock-injected so the router (wall clock) and the simulator (virtual clock) compute the same
figures from the same finished requests.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .state import SLO, meets_slo


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished (or failed) request: when it ended, its TTFT and TPOT (None if it never got there)."""

    end: float
    ttft: float | None
    tpot: float | None
    failed: bool = False

    def meets(self, slo: SLO) -> bool:
        return meets_slo(slo, self.ttft, self.tpot, not self.failed)


@dataclass(frozen=True, slots=True)
class WindowStats:
    requests: int
    ttft_mean: float | None
    ttft_attainment: float | None
    slo_attainment: float | None
    goodput: float  # requests per second that met both SLOs
    rejected: int = 0  # requests turned away for want of capacity (not counted in `requests`)
    arrived: int = 0  # requests that arrived (rejected ones included): with `requests`, demand against throughput


class SloWindow:
    """The outcomes of the last `seconds` seconds."""

    def __init__(self, slo: SLO, seconds: float = 60.0) -> None:
        if seconds <= 0:
            raise ValueError(f"window must be positive, got {seconds}")
        self.slo = slo
        self.seconds = seconds
        self._outcomes: deque[Outcome] = deque()
        self._rejections: deque[float] = deque()
        self._arrivals: deque[float] = deque()

    def record(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)

    def record_rejection(self, now: float) -> None:
        self._rejections.append(now)

    def record_arrival(self, now: float) -> None:
        self._arrivals.append(now)

    def stats(self, now: float) -> WindowStats:
        start = now - self.seconds
        while self._outcomes and self._outcomes[0].end < start:
            self._outcomes.popleft()
        for times in (self._rejections, self._arrivals):
            while times and times[0] < start:
                times.popleft()
        outcomes = list(self._outcomes)
        rejected, arrived = len(self._rejections), len(self._arrivals)
        if not outcomes:
            return WindowStats(0, None, None, None, 0.0, rejected, arrived)
        ttfts = [o.ttft for o in outcomes if o.ttft is not None]
        met = sum(o.meets(self.slo) for o in outcomes)
        ttft_ok = sum(1 for o in outcomes if not o.failed and o.ttft is not None and o.ttft <= self.slo.ttft)
        return WindowStats(
            requests=len(outcomes),
            ttft_mean=sum(ttfts) / len(ttfts) if ttfts else None,
            ttft_attainment=ttft_ok / len(outcomes),
            slo_attainment=met / len(outcomes),
            goodput=met / self.seconds,
            rejected=rejected,
            arrived=arrived,
        )
