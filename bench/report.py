"""Latency percentiles, SLO attainment and goodput of a load run.

Definitions (all times in seconds):

- TTFT: first text chunk − send; E2E: `[DONE]` − send; TPOT per request: (E2E − TTFT)/(tokens − 1), for
  requests of 2 tokens or more; ITL: every gap between consecutive text chunks of every request. Latency
  statistics are over `ok` requests only (a failed request has no complete latency).
- Percentiles are numpy's default ('linear' interpolation between closest ranks).
- A request meets the SLO when it is `ok`, its TTFT ≤ the TTFT SLO and its TPOT ≤ the TPOT SLO (a request of
  one token has no TPOT and is judged on TTFT alone). Attainment is the share of *all* requests meeting it:
  rejected, failed, truncated and unsent requests count as misses, so shedding load never flatters a run.
- Duration: from the first send to the last end. Request throughput is ok requests per second of it, output
  token throughput the tokens of ok requests per second, goodput the requests meeting the SLO per second.
- Send lag: how late the client sent a request after its arrival time; more than a few milliseconds means
  the load generator itself could not keep up, and the run offered less load than asked.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecoserve.brain.state import SLO
from ecoserve.brain.state import meets_slo as _meets

from .client import RequestResult

TOP_ERRORS = 5  # distinct error messages kept in a report, most frequent first


@dataclass(frozen=True, slots=True)
class Stats:
    """Mean and percentiles of one latency metric, in seconds."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Stats | None:
        """The statistics of `values`; None when there are none."""
        data = np.fromiter(values, dtype=float)
        if data.size == 0:
            return None
        p50, p90, p99 = np.percentile(data, [50, 90, 99])
        return cls(int(data.size), float(data.mean()), float(p50), float(p90), float(p99))

    def to_json(self) -> dict[str, float | int]:
        return {"count": self.count, "mean": self.mean, "p50": self.p50, "p90": self.p90, "p99": self.p99}


def meets_slo(result: RequestResult, slo: SLO) -> bool:
    """Whether one request met both latency targets (see the module's definitions)."""
    return _meets(slo, result.ttft, result.tpot, result.outcome == "ok")


@dataclass(frozen=True, slots=True)
class BenchReport:
    """The summary of one run: counts, latency statistics, SLO attainment, throughput and goodput."""

    slo: SLO
    total: int
    sent: int
    ok: int
    rejected: int
    errors: int
    truncated: int
    wrong_length: int  # ok requests whose token count differs from the one asked (a server ignoring min_tokens)
    met: int
    duration: float
    max_send_lag: float
    output_tokens: int
    ttft: Stats | None
    tpot: Stats | None
    itl: Stats | None
    e2e: Stats | None
    top_errors: tuple[tuple[str, int], ...]

    @property
    def unsent(self) -> int:
        return self.total - self.sent

    @property
    def attainment(self) -> float:
        return self.met / self.total if self.total else 0.0

    def _per_second(self, amount: int) -> float:
        return amount / self.duration if self.duration > 0 else 0.0

    @property
    def request_throughput(self) -> float:
        return self._per_second(self.ok)

    @property
    def output_throughput(self) -> float:
        return self._per_second(self.output_tokens)

    @property
    def goodput(self) -> float:
        return self._per_second(self.met)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types; times in seconds, rates per second, attainment as a fraction."""
        metrics = {"ttft": self.ttft, "tpot": self.tpot, "itl": self.itl, "e2e": self.e2e}
        return {
            "slo": {"ttft_s": self.slo.ttft, "tpot_s": self.slo.tpot, "attainment": self.slo.attainment},
            "counts": {
                "total": self.total,
                "sent": self.sent,
                "ok": self.ok,
                "rejected": self.rejected,
                "errors": self.errors,
                "truncated": self.truncated,
                "unsent": self.unsent,
                "wrong_length": self.wrong_length,
                "met_slo": self.met,
            },
            "duration_s": self.duration,
            "max_send_lag_s": self.max_send_lag,
            "attainment": self.attainment,
            "attainment_met": self.attainment >= self.slo.attainment,
            "request_throughput_rps": self.request_throughput,
            "output_throughput_tps": self.output_throughput,
            "goodput_rps": self.goodput,
            "latency_s": {name: None if s is None else s.to_json() for name, s in metrics.items()},
            "top_errors": [{"message": m, "count": n} for m, n in self.top_errors],
        }

    def format_table(self) -> str:
        """A human-readable summary: counts, a latency table in milliseconds, then SLO and throughput."""
        lines = [
            f"requests  sent {self.sent}/{self.total}  ok {self.ok}  rejected(429) {self.rejected}  "
            f"errors {self.errors}  truncated {self.truncated}"
            + (f"  unsent {self.unsent}" if self.unsent else "")
            + (f"  wrong length {self.wrong_length}" if self.wrong_length else ""),
            "",
            f"{'latency (ms)':<14}{'count':>8}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}",
        ]
        for name, stats in (("TTFT", self.ttft), ("TPOT", self.tpot), ("ITL", self.itl), ("E2E", self.e2e)):
            if stats is None:
                lines.append(f"{name:<14}{0:>8}{'-':>10}{'-':>10}{'-':>10}{'-':>10}")
            else:
                values = (stats.mean, stats.p50, stats.p90, stats.p99)
                lines.append(f"{name:<14}{stats.count:>8}" + "".join(f"{v * 1e3:>10.1f}" for v in values))
        verdict = "met" if self.attainment >= self.slo.attainment else "missed"
        lines += [
            "",
            f"SLO       TTFT ≤ {self.slo.ttft * 1e3:g} ms, TPOT ≤ {self.slo.tpot * 1e3:g} ms: attainment "
            f"{self.attainment:.1%} (target {self.slo.attainment:.0%}, {verdict})",
            f"duration  {self.duration:.1f} s  throughput {self.request_throughput:.2f} req/s, "
            f"{self.output_throughput:.1f} output tok/s  goodput {self.goodput:.2f} req/s  "
            f"max send lag {self.max_send_lag * 1e3:.0f} ms",
        ]
        lines += [f"error     {n} × {message}" for message, n in self.top_errors]
        return "\n".join(lines)


def summarize(results: Sequence[RequestResult], slo: SLO) -> BenchReport:
    """The report of a run from its per-request results."""
    ok = [r for r in results if r.outcome == "ok"]
    outcomes = Counter(r.outcome for r in results)
    starts = [r.sent for r in results if r.sent is not None]
    ends = [r.end for r in results if r.end is not None]
    return BenchReport(
        slo=slo,
        total=len(results),
        sent=len(starts),
        ok=len(ok),
        rejected=outcomes["rejected"],
        errors=outcomes["error"],
        truncated=outcomes["truncated"],
        wrong_length=sum(r.tokens != r.request.output_tokens for r in ok),
        met=sum(meets_slo(r, slo) for r in results),
        duration=max(ends) - min(starts) if ends else 0.0,
        max_send_lag=max((r.sent - r.request.arrival for r in results if r.sent is not None), default=0.0),
        output_tokens=sum(r.tokens for r in ok),
        ttft=Stats.of(r.ttft for r in ok if r.ttft is not None),
        tpot=Stats.of(r.tpot for r in ok if r.tpot is not None),
        itl=Stats.of(gap for r in ok for gap in r.itls),
        e2e=Stats.of(r.e2e for r in ok if r.e2e is not None),
        top_errors=tuple(Counter(r.error for r in results if r.error).most_common(TOP_ERRORS)),
    )
