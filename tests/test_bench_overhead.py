"""The router benchmark: figures from hand-made results, and one short real run of `ecoserve bench-router`."""

from __future__ import annotations

import json
import subprocess

import pytest
from procs import CLI, free_ports

from ecoserve.bench.client import RequestResult
from ecoserve.bench.overhead import PathResult, added_latency, burst_workload, format_table
from ecoserve.bench.workload import WorkloadRequest

REQ = WorkloadRequest(0.0, 8, 4)


def result(sent: float, first: float, end: float, tokens: int = 4, outcome: str = "ok") -> RequestResult:
    return RequestResult(REQ, outcome, sent=sent, end=end, chunk_times=(first,), tokens=tokens)


def test_path_result_counts_ok_tokens_over_the_phase_span():
    r = PathResult.of([result(0.0, 0.01, 1.0), result(0.5, 0.52, 2.0), result(0.6, 0.7, 0.8, outcome="error")])
    assert (r.ok, r.failed, r.output_tokens) == (2, 1, 8)
    assert r.duration == pytest.approx(2.0) and r.tokens_per_second == pytest.approx(4.0)
    assert r.ttft.p50 == pytest.approx(0.015)


def test_added_latency_is_router_minus_direct():
    direct = PathResult.of([result(0, 0.010, 1), result(0, 0.010, 1)])
    routed = PathResult.of([result(0, 0.013, 1), result(0, 0.013, 1)])
    added = added_latency({"latency_direct": direct, "latency_router": routed})
    assert added["p50"] == pytest.approx(0.003) and added["p99"] == pytest.approx(0.003)
    table = format_table({"latency_direct": direct, "latency_router": routed})
    assert "added TTFT by the router: p50 3.00 ms" in table
    assert added_latency({"latency_direct": PathResult.of([]), "latency_router": routed})["p50"] is None


def test_burst_workload_arrives_at_once():
    assert {r.arrival for r in burst_workload(5, 8, 4)} == {0.0}


@pytest.mark.e2e
def test_bench_router_runs_end_to_end(tmp_path):
    port = free_ports(1)[0]
    out = tmp_path / "overhead.json"
    args = ["bench-router", "--port", str(port), "--requests", "20", "--rate", "50", "--burst", "10"]
    proc = subprocess.run([*CLI, *args, "--output-tokens", "8", "--json", str(out)], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    figures = json.loads(out.read_text())
    for phase in ("latency_direct", "latency_router", "burst_direct", "burst_router"):
        assert figures[phase]["ok"] == (20 if phase.startswith("latency") else 10)
        assert figures[phase]["output_tokens"] == figures[phase]["ok"] * 8
    assert figures["added_ttft_s"]["p50"] is not None
    assert "added TTFT by the router" in proc.stdout.decode()
