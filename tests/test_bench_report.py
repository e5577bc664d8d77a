"""Report math on hand-made results: percentiles, TPOT and ITL, attainment with failures as misses, goodput."""

from __future__ import annotations

import json

import pytest

from ecoserve.bench.client import Outcome, RequestResult
from ecoserve.bench.report import Stats, meets_slo, summarize
from ecoserve.bench.workload import WorkloadRequest
from ecoserve.brain.state import SLO

SLO_1S = SLO(ttft=1.0, tpot=0.2, attainment=0.9)


def _result(
    outcome: Outcome,
    sent: float | None,
    chunks: tuple[float, ...] = (),
    end: float | None = None,
    *,
    asked: int | None = None,
    status: int | None = None,
    error: str | None = None,
) -> RequestResult:
    """A result whose token count is its number of chunks (`asked` defaults to the same); it arrived at
    min(sent, 2), so only the one sent at 3.0 was sent late."""
    request = WorkloadRequest(0.0 if sent is None else min(sent, 2.0), 10, asked or max(len(chunks), 1))
    return RequestResult(request, outcome, sent, end, chunks, len(chunks), status, error)


RESULTS = [
    _result("ok", 0.0, (0.5, 0.6, 0.7, 0.8), 0.8, status=200),  # TTFT 0.5, TPOT 0.1: meets
    _result("ok", 1.0, (3.0, 3.5), 3.5, status=200),  # TTFT 2.0: misses
    _result("ok", 2.0, (2.2,), 2.2, status=200, asked=3),  # one token of 3 asked
    _result("rejected", 2.5, (), 2.51, status=429, error="HTTP 429: queue full"),
    _result("truncated", 3.0, (3.1,), 3.2, status=200, error="RemoteProtocolError: peer closed"),
    _result("unsent", None, error="the global deadline came first"),
]


def test_per_request_metrics() -> None:
    first, second, single = RESULTS[:3]
    assert first.ttft == pytest.approx(0.5) and first.e2e == pytest.approx(0.8)
    assert first.tpot == pytest.approx(0.1) and first.itls == pytest.approx((0.1, 0.1, 0.1))
    assert second.tpot == pytest.approx(0.5)
    assert single.tpot is None and single.itls == ()
    assert RESULTS[5].ttft is None and RESULTS[5].e2e is None


def test_slo_needs_an_ok_request_within_both_targets() -> None:
    assert [meets_slo(r, SLO_1S) for r in RESULTS] == [True, False, True, False, False, False]
    assert not meets_slo(RESULTS[0], SLO(ttft=1.0, tpot=0.05))


def test_summary_counts_percentiles_attainment_and_goodput() -> None:
    report = summarize(RESULTS, SLO_1S)
    assert (report.total, report.sent, report.ok, report.rejected, report.errors, report.truncated) == (
        6,
        5,
        3,
        1,
        0,
        1,
    )
    assert report.unsent == 1 and report.wrong_length == 1 and report.met == 2
    assert report.attainment == pytest.approx(2 / 6)  # failures and the unsent request count as misses
    assert report.duration == pytest.approx(3.5)  # first send 0.0 → last end 3.5
    assert report.max_send_lag == pytest.approx(1.0)  # the truncated request, sent at 3.0 for 2.0
    assert report.goodput == pytest.approx(2 / 3.5)
    assert report.request_throughput == pytest.approx(3 / 3.5)
    assert report.output_throughput == pytest.approx(7 / 3.5)

    assert report.ttft == Stats(3, pytest.approx(0.9), pytest.approx(0.5), pytest.approx(1.7), pytest.approx(1.97))
    assert report.tpot is not None and report.tpot.count == 2 and report.tpot.mean == pytest.approx(0.3)
    assert report.itl is not None and report.itl.count == 4 and report.itl.mean == pytest.approx(0.2)
    assert report.e2e is not None and report.e2e.p50 == pytest.approx(0.8)
    assert report.top_errors[0][1] == 1 and len(report.top_errors) == 3


def test_json_and_table() -> None:
    report = summarize(RESULTS, SLO_1S)
    document = report.to_json()
    json.dumps(document)  # plain JSON types only
    assert document["counts"]["met_slo"] == 2 and document["attainment_met"] is False
    assert document["latency_s"]["ttft"]["p90"] == pytest.approx(1.7)
    assert document["slo"] == {"ttft_s": 1.0, "tpot_s": 0.2, "attainment": 0.9}
    table = report.format_table()
    assert "rejected(429) 1" in table and "unsent 1" in table and "wrong length 1" in table
    ttft_line = next(line for line in table.splitlines() if line.startswith("TTFT"))
    assert ttft_line.split() == ["TTFT", "3", "900.0", "500.0", "1700.0", "1970.0"]
    assert "attainment 33.3% (target 90%, missed)" in table


def test_a_run_with_no_success_has_no_latencies() -> None:
    report = summarize(RESULTS[3:], SLO_1S)
    assert report.ok == 0 and report.ttft is None and report.itl is None and report.attainment == 0.0
    assert report.to_json()["latency_s"]["e2e"] is None
    assert "TTFT" in report.format_table()
    empty = summarize([], SLO_1S)
    assert empty.duration == 0.0 and empty.goodput == 0.0 and empty.attainment == 0.0
