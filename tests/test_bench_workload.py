"""Workloads: trace loading, re-timing math, synthetic lengths, truncation and clear errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ecoserve.bench.workload import (
    DATASETS,
    WorkloadError,
    WorkloadRequest,
    WorkloadSpec,
    arrival_times,
    build_workload,
    clip_lengths,
    describe,
    geometric_lengths,
    load_trace,
    truncate,
)

TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces"
AZURE = TRACES / "azure_llm_2023_conv.csv"
needs_trace = pytest.mark.skipif(not AZURE.is_file(), reason=f"shared trace not found at {AZURE}")


@needs_trace
def test_the_azure_trace_loads_with_arrivals_from_zero() -> None:
    with AZURE.open(newline="") as f:
        rows = list(csv.DictReader(f))
    trace = load_trace(AZURE)
    assert trace.format == "azure" and trace.timed
    assert len(trace.requests) == len(rows) > 19000
    first, last = trace.requests[0], trace.requests[-1]
    assert first == WorkloadRequest(0.0, int(rows[0]["ContextTokens"]), int(rows[0]["GeneratedTokens"]))
    assert trace.requests[1].arrival == pytest.approx(50.9951690 - 46.6805900, abs=1e-5)  # 18:15:46.68 → :50.99
    assert last.arrival == pytest.approx(58 * 60 + 8.4025270 - 46.6805900 + 60, abs=1e-5)  # 18:15:46 → 19:14:08
    arrivals = [r.arrival for r in trace.requests]
    assert arrivals == sorted(arrivals)
    assert sum(r.prompt_tokens for r in trace.requests) == sum(int(r["ContextTokens"]) for r in rows)


@needs_trace
def test_rate_scale_compresses_the_trace() -> None:
    base = build_workload(WorkloadSpec(trace=AZURE))
    fast = build_workload(WorkloadSpec(trace=AZURE, rate_scale=2.0))
    assert len(fast) == len(base)
    assert fast[-1].arrival == pytest.approx(base[-1].arrival / 2)
    assert [r.prompt_tokens for r in fast] == [r.prompt_tokens for r in base]
    cut = build_workload(WorkloadSpec(trace=AZURE, rate_scale=2.0, duration=60))
    assert cut == tuple(r for r in fast if r.arrival < 60)


@needs_trace
def test_a_trace_can_take_generated_arrivals_and_keeps_its_lengths() -> None:
    trace = load_trace(AZURE)
    poisson = build_workload(WorkloadSpec(trace=AZURE, arrival="poisson", rate=20.0, max_requests=5000))
    assert [(r.prompt_tokens, r.output_tokens) for r in poisson] == [
        (r.prompt_tokens, r.output_tokens) for r in trace.requests[:5000]
    ]
    assert describe(poisson)["offered_rate_rps"] == pytest.approx(20.0, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0])
def test_renewal_arrivals_have_the_asked_rate_and_cv(cv: float) -> None:
    times = arrival_times(8.0, np.random.default_rng(1), cv=cv, count=40_000)
    assert times[0] == 0.0 and len(times) == 40_000
    gaps = np.diff(times)
    assert (gaps >= 0).all()  # shape 1/cv² < 1 draws gaps too small to move a float sum
    assert 1 / gaps.mean() == pytest.approx(8.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_arrivals_by_duration_stop_before_it_and_are_seeded() -> None:
    times = arrival_times(50.0, np.random.default_rng(2), duration=100.0)
    assert times.max() < 100.0 and len(times) == pytest.approx(5000, rel=0.05)
    again = arrival_times(50.0, np.random.default_rng(2), duration=100.0)
    np.testing.assert_array_equal(times, again)
    both = arrival_times(50.0, np.random.default_rng(2), count=10, duration=100.0)
    assert len(both) == 10
    with pytest.raises(ValueError, match="count or a duration"):
        arrival_times(1.0, np.random.default_rng(0))


@pytest.mark.parametrize("name", list(DATASETS))
def test_synthetic_lengths_have_the_dataset_means(name: str) -> None:
    requests = build_workload(WorkloadSpec(dataset=name, rate=100.0, max_requests=20_000, seed=5))
    assert len(requests) == 20_000
    means = describe(requests)
    assert means["mean_prompt_tokens"] == pytest.approx(DATASETS[name].prompt, rel=0.03)
    assert means["mean_output_tokens"] == pytest.approx(DATASETS[name].output, rel=0.03)
    assert min(min(r.prompt_tokens, r.output_tokens) for r in requests) >= 1


def test_mean_lengths_can_be_overridden_and_are_clipped_to_the_context() -> None:
    spec = WorkloadSpec(dataset="sharegpt", rate=10.0, max_requests=20_000, input_len=100, output_len=40)
    means = describe(build_workload(spec))
    assert means["mean_prompt_tokens"] == pytest.approx(100, rel=0.03)
    assert means["mean_output_tokens"] == pytest.approx(40, rel=0.03)
    clipped = build_workload(WorkloadSpec(dataset="longbench", rate=10.0, max_requests=2000, max_context=4096))
    assert max(r.prompt_tokens + r.output_tokens for r in clipped) <= 4096
    assert clip_lengths([WorkloadRequest(0.0, 10, 100)], 50) == (WorkloadRequest(0.0, 1, 49),)
    assert clip_lengths([WorkloadRequest(0.0, 60, 20)], 50) == (WorkloadRequest(0.0, 30, 20),)
    with pytest.raises(ValueError, match="at least 1 token"):
        geometric_lengths(0.5, 3, np.random.default_rng(0))


def test_the_same_spec_gives_the_same_workload_and_the_seed_changes_it() -> None:
    spec = WorkloadSpec(dataset="alpaca", arrival="gamma", rate=5.0, cv=3.0, duration=50.0, seed=11)
    assert build_workload(spec) == build_workload(spec)
    other = build_workload(WorkloadSpec(dataset="alpaca", arrival="gamma", rate=5.0, cv=3.0, duration=50.0))
    assert other != build_workload(spec)


def test_truncation_by_duration_and_count() -> None:
    requests = [WorkloadRequest(float(t), 1, 1) for t in range(10)]
    assert len(truncate(requests, duration=4.0)) == 4
    assert len(truncate(requests, max_requests=3)) == 3
    assert len(truncate(requests, duration=4.0, max_requests=6)) == 4
    assert len(truncate(requests)) == 10
    synthetic = build_workload(WorkloadSpec(dataset="alpaca", rate=10.0, duration=30.0, max_requests=25))
    assert len(synthetic) == 25 and synthetic[-1].arrival < 30.0


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_vidur_trace_with_and_without_arrivals(tmp_path: Path) -> None:
    timed = load_trace(
        _write(tmp_path / "t.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n3.5,10,2\n1.5,4.0,7\n")
    )
    assert timed.format == "vidur" and timed.timed
    assert timed.requests == (WorkloadRequest(0.0, 4, 7), WorkloadRequest(2.0, 10, 2))
    lengths = _write(tmp_path / "l.csv", "num_prefill_tokens,num_decode_tokens\n10,2\n4,7\n")
    assert not load_trace(lengths).timed
    with pytest.raises(WorkloadError, match="no arrived_at column") as err:
        build_workload(WorkloadSpec(trace=lengths))
    assert err.value.field == "arrival"
    gamma = build_workload(WorkloadSpec(trace=lengths, arrival="gamma", rate=2.0, cv=0.5))
    assert [r.prompt_tokens for r in gamma] == [10, 4] and gamma[0].arrival == 0.0 < gamma[1].arrival


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.6805900,3\n", r"missing column\(s\) GeneratedTokens"),
        ("num_prefill_tokens,arrived_at\n3,0\n", r"missing column\(s\) num_decode_tokens"),
        ("a,b\n1,2\n", r"missing column\(s\) TIMESTAMP, ContextTokens, GeneratedTokens"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no rows"),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,3,4\n2023-11-16 18:15:47,3,x\n",
            r"bad\.csv:3: GeneratedTokens: not a number: 'x'",
        ),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,3,4\n", r"bad\.csv:2: TIMESTAMP: not a timestamp"),
        ("num_prefill_tokens,num_decode_tokens\n3,0\n", r"bad\.csv:2: num_decode_tokens: expected a positive"),
        ("num_prefill_tokens,num_decode_tokens\n2.5,1\n", r"bad\.csv:2: num_prefill_tokens: expected a positive"),
        ("arrived_at,num_prefill_tokens,num_decode_tokens\nnan,1,1\n", r"bad\.csv:2: arrived_at: not a finite"),
    ],
)
def test_bad_traces_name_the_column_or_line(tmp_path: Path, text: str, match: str) -> None:
    with pytest.raises(WorkloadError, match=match) as err:
        load_trace(_write(tmp_path / "bad.csv", text))
    assert err.value.field == "trace"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({}, "trace"),
        ({"trace": Path("t.csv"), "dataset": "alpaca"}, "trace"),
        ({"dataset": "nope", "rate": 1.0, "duration": 1.0}, "dataset"),
        ({"dataset": "alpaca", "duration": 1.0}, "rate"),
        ({"dataset": "alpaca", "rate": -1.0, "duration": 1.0}, "rate"),
        ({"dataset": "alpaca", "rate": 1.0}, "duration"),
        ({"dataset": "alpaca", "rate": 1.0, "duration": 1.0, "arrival": "trace"}, "arrival"),
        ({"dataset": "alpaca", "rate": 1.0, "duration": 1.0, "arrival": "gamma"}, "cv"),
        ({"dataset": "alpaca", "rate": 1.0, "duration": 1.0, "arrival": "gamma", "cv": 0.0}, "cv"),
        ({"dataset": "alpaca", "rate": 1.0, "duration": 1.0, "cv": 2.0}, "cv"),
        ({"dataset": "alpaca", "rate": 1.0, "duration": 1.0, "rate_scale": 2.0}, "rate_scale"),
        ({"dataset": "alpaca", "rate": 1.0, "duration": 1.0, "input_len": 0.5}, "input_len"),
        ({"dataset": "alpaca", "rate": 1.0, "max_requests": 0}, "max_requests"),
        ({"trace": Path("t.csv"), "rate": 1.0}, "rate"),
        ({"trace": Path("t.csv"), "output_len": 10.0}, "output_len"),
        ({"trace": Path("t.csv"), "max_context": 1}, "max_context"),
    ],
)
def test_bad_specs_name_the_setting(kwargs: dict, field: str) -> None:
    with pytest.raises(WorkloadError) as err:
        WorkloadSpec(**kwargs)
    assert err.value.field == field
