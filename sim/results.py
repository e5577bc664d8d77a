"""What a run yields: SLO attainment and latency statistics over the requests a user sent."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ecoserve.bench.report import Stats
from ecoserve.brain.state import SLO, meets_slo

from .core import RequestRecord


def meets(record: RequestRecord, slo: SLO) -> bool:
    """Both SLOs met; a rejected or unfinished request never meets them."""
    return meets_slo(slo, record.ttft, record.tpot, not record.rejected and record.finish is not None)


@dataclass(frozen=True, slots=True)
class RunSummary:
    rate: float
    requests: int
    attainment: float
    ttft_attainment: float
    tpot_attainment: float
    rejected: int
    ttft: Stats | None
    tpot: Stats | None
    e2e: Stats | None

    def to_json(self) -> dict[str, Any]:
        def stats(s: Stats | None) -> dict | None:
            return s.to_json() if s else None

        return {
            "rate": self.rate,
            "requests": self.requests,
            "attainment": self.attainment,
            "ttft_attainment": self.ttft_attainment,
            "tpot_attainment": self.tpot_attainment,
            "rejected": self.rejected,
            "ttft": stats(self.ttft),
            "tpot": stats(self.tpot),
            "e2e": stats(self.e2e),
        }


def summarize(records: Sequence[RequestRecord], slo: SLO, rate: float) -> RunSummary:
    n = len(records) or 1
    done = [r for r in records if r.finish is not None and not r.rejected]
    ttft_ok = sum(1 for r in done if r.ttft is not None and r.ttft <= slo.ttft)
    tpot_ok = sum(1 for r in done if r.tpot is None or r.tpot <= slo.tpot)
    return RunSummary(
        rate=rate,
        requests=len(records),
        attainment=sum(meets(r, slo) for r in records) / n,
        ttft_attainment=ttft_ok / n,
        tpot_attainment=tpot_ok / n,
        rejected=sum(r.rejected for r in records),
        ttft=Stats.of(r.ttft for r in done if r.ttft is not None),
        tpot=Stats.of(r.tpot for r in done if r.tpot is not None),
        e2e=Stats.of(r.finish - r.arrival for r in done if r.finish is not None),
    )
