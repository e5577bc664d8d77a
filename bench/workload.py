"""Workloads to replay: request arrival times with exact prompt and output lengths.

Pure and seeded (no I/O beyond reading a trace file, no clock), so that `ecoserve bench` and the simulator
replay the very same requests from the same flags.

Sources:

- **Traces**: the Azure LLM inference trace (`TIMESTAMP, ContextTokens, GeneratedTokens`; arrivals are the
  timestamps relative to the earliest) or a Vidur-style CSV (`num_prefill_tokens, num_decode_tokens` and an
  optional `arrived_at` column in seconds; without it a trace has lengths only and needs generated arrivals).
- **Synthetic datasets** by name, with the mean prompt and output lengths of the dataset they stand for.
  Lengths are geometric (support 1, 2, …) with the asked mean: the maximum-entropy distribution for a
  positive integer of given mean, exponential-like as measured request lengths roughly are, and free of any
  further parameter to invent. Only `DATASETS`' means come from the datasets; the shapes do not.

Arrivals: the trace's own, sped up by `rate_scale` (2.0 replays twice as fast), or a renewal process at
`rate` requests/s — Poisson (exponential gaps) or Gamma gaps with coefficient of variation `cv` (shape 1/cv²,
scale 1/(rate·shape), so the mean gap is 1/rate; cv = 1 is Poisson, cv > 1 burstier). Generated arrivals
start at 0, like a trace's first request, so a run starts sending at once.

Every request is clipped to `max_context` tokens in all: the output to at most max_context − 1, then the
prompt to what is left (prompt first, as Vidur does, to keep the decode work that SLOs are about).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

Arrival = Literal["trace", "poisson", "gamma"]
ARRIVALS: tuple[Arrival, ...] = ("trace", "poisson", "gamma")
DEFAULT_MAX_CONTEXT = 32768

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
VIDUR_COLUMNS = ("num_prefill_tokens", "num_decode_tokens")
VIDUR_ARRIVAL = "arrived_at"


@dataclass(frozen=True, slots=True)
class WorkloadRequest:
    """One request to replay: when it arrives (seconds from the start of the run) and its exact lengths."""

    arrival: float
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class LengthMeans:
    """Mean prompt and output lengths in tokens of a dataset."""

    prompt: float
    output: float


# Mean lengths of the three datasets of the EcoServe paper's evaluation (arXiv 2504.18154).
DATASETS: Mapping[str, LengthMeans] = MappingProxyType(
    {
        "alpaca": LengthMeans(20.63, 163.80),
        "sharegpt": LengthMeans(343.76, 237.20),
        "longbench": LengthMeans(2686.89, 101.78),
    }
)


class WorkloadError(ValueError):
    """A workload that cannot be built; `field` names the offending setting (a `WorkloadSpec` field)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Trace:
    """A loaded trace; `timed` is False when it has lengths only (arrivals all 0, to be generated)."""

    path: Path
    format: Literal["azure", "vidur"]
    requests: tuple[WorkloadRequest, ...]
    timed: bool


def _positive_int(text: str | None, column: str) -> int:
    """A token count: a positive integer, also written as a float ("12.0") as pandas-made CSVs do."""
    try:
        value = float(text or "")
    except ValueError:
        raise ValueError(f"{column}: not a number: {text!r}") from None
    if not value.is_integer() or value < 1:
        raise ValueError(f"{column}: expected a positive integer, got {text!r}")
    return int(value)


def _seconds(text: str | None, column: str) -> float:
    try:
        value = float(text or "")
    except ValueError:
        raise ValueError(f"{column}: not a number of seconds: {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{column}: not a finite number of seconds: {text!r}")
    return value


def _timestamp(text: str | None, column: str) -> float:
    try:
        moment = datetime.fromisoformat((text or "").strip())
    except ValueError:
        raise ValueError(f"{column}: not a timestamp like 2023-11-16 18:15:46.6805900: {text!r}") from None
    # A naive time is taken as UTC: only differences matter, and local time would bend them at a DST change.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def load_trace(path: Path) -> Trace:
    """Load an Azure or Vidur-style trace CSV (told apart by its columns), sorted by arrival from 0.

    Raises `WorkloadError` naming a missing column, or the file and line of a bad value.
    """
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or ()]
        reader.fieldnames = columns
        rows = list(reader)
    if any(c in columns for c in VIDUR_COLUMNS):
        fmt: Literal["azure", "vidur"] = "vidur"
        required, timed = VIDUR_COLUMNS, VIDUR_ARRIVAL in columns
    else:
        fmt, required, timed = "azure", AZURE_COLUMNS, True
    missing = [c for c in required if c not in columns]
    if missing:
        raise WorkloadError(
            f"{path}: missing column(s) {', '.join(missing)} (an Azure trace has {', '.join(AZURE_COLUMNS)}; "
            f"a Vidur trace has {', '.join(VIDUR_COLUMNS)} and optionally {VIDUR_ARRIVAL})",
            "trace",
        )
    if not rows:
        raise WorkloadError(f"{path}: the trace has no rows", "trace")
    parsed: list[tuple[float, int, int]] = []
    for line, row in enumerate(rows, start=2):
        try:
            if fmt == "azure":
                arrival = _timestamp(row["TIMESTAMP"], "TIMESTAMP")
                lengths = (
                    _positive_int(row["ContextTokens"], "ContextTokens"),
                    _positive_int(row["GeneratedTokens"], "GeneratedTokens"),
                )
            else:
                arrival = _seconds(row[VIDUR_ARRIVAL], VIDUR_ARRIVAL) if timed else 0.0
                lengths = (
                    _positive_int(row["num_prefill_tokens"], "num_prefill_tokens"),
                    _positive_int(row["num_decode_tokens"], "num_decode_tokens"),
                )
        except ValueError as err:
            raise WorkloadError(f"{path}:{line}: {err}", "trace") from None
        parsed.append((arrival, *lengths))
    first = min(p[0] for p in parsed)
    requests = sorted((WorkloadRequest(a - first, p, o) for a, p, o in parsed), key=lambda r: r.arrival)
    return Trace(path, fmt, tuple(requests), timed)


def arrival_times(
    rate: float,
    rng: np.random.Generator,
    *,
    cv: float = 1.0,
    count: int | None = None,
    duration: float | None = None,
) -> np.ndarray:
    """Arrival times of a Gamma renewal process (cv = 1: Poisson) from 0: `count` of them, those before
    `duration`, or both limits (at least one must be given)."""
    if rate <= 0 or cv <= 0:
        raise ValueError(f"rate and cv must be positive, got rate={rate} cv={cv}")
    if count is None and duration is None:
        raise ValueError("give a count or a duration, or the process never ends")
    if count is not None and count < 1:
        return np.zeros(0)
    shape = 1.0 / cv**2
    scale = 1.0 / (rate * shape)
    chunk = count - 1 if count is not None else max(16, math.ceil(rate * duration))
    gaps = [rng.gamma(shape, scale, size=chunk)]
    total = float(gaps[0].sum())
    while count is None and total < duration:  # without a count, draw until past the duration
        gaps.append(rng.gamma(shape, scale, size=chunk))
        total += float(gaps[-1].sum())
    times = np.concatenate(([0.0], np.cumsum(np.concatenate(gaps))))
    return times[times < duration] if duration is not None else times


def geometric_lengths(mean: float, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` geometric lengths (1, 2, …) with the given mean (≥ 1)."""
    if mean < 1:
        raise ValueError(f"a mean length must be at least 1 token, got {mean}")
    return rng.geometric(1.0 / mean, size=count)


def clip_lengths(requests: Sequence[WorkloadRequest], max_context: int) -> tuple[WorkloadRequest, ...]:
    """Fit every request in `max_context` tokens: output to max_context − 1, then the prompt to the rest."""
    if max_context < 2:
        raise ValueError(f"max_context must be at least 2 tokens, got {max_context}")
    clipped = []
    for r in requests:
        output = min(r.output_tokens, max_context - 1)
        clipped.append(replace(r, output_tokens=output, prompt_tokens=min(r.prompt_tokens, max_context - output)))
    return tuple(clipped)


def truncate(
    requests: Sequence[WorkloadRequest], *, duration: float | None = None, max_requests: int | None = None
) -> tuple[WorkloadRequest, ...]:
    """The requests arriving before `duration` seconds, at most the first `max_requests` of them."""
    kept = [r for r in requests if duration is None or r.arrival < duration]
    return tuple(kept if max_requests is None else kept[:max_requests])


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """Everything that defines a workload; `build_workload` turns it into requests, the same every time.

    Field names match `ecoserve bench`'s flags (`rate_scale` is `--rate-scale`), and `WorkloadError.field`
    names one of them. `arrival=None` means the trace's own arrivals for a trace, Poisson for a dataset.
    """

    trace: Path | None = None
    dataset: str | None = None
    arrival: Arrival | None = None
    rate: float | None = None
    rate_scale: float | None = None
    cv: float | None = None
    input_len: float | None = None
    output_len: float | None = None
    duration: float | None = None
    max_requests: int | None = None
    max_context: int = DEFAULT_MAX_CONTEXT
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.trace is None) == (self.dataset is None):
            raise WorkloadError("give exactly one of a trace and a dataset", "trace")
        if self.dataset is not None and self.dataset not in DATASETS:
            raise WorkloadError(f"unknown dataset {self.dataset!r}, one of: {', '.join(DATASETS)}", "dataset")
        if self.arrival is not None and self.arrival not in ARRIVALS:
            raise WorkloadError(f"unknown arrival process {self.arrival!r}, one of: {', '.join(ARRIVALS)}", "arrival")
        for name in ("rate", "rate_scale", "cv", "duration"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise WorkloadError(f"must be a positive number, got {value}", name)
        for name in ("input_len", "output_len"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 1):
                raise WorkloadError(f"a mean length must be at least 1 token, got {value}", name)
        if self.max_requests is not None and self.max_requests < 1:
            raise WorkloadError(f"must be at least 1, got {self.max_requests}", "max_requests")
        if self.max_context < 2:
            raise WorkloadError(f"must be at least 2 tokens, got {self.max_context}", "max_context")
        self._check_combination()

    def _check_combination(self) -> None:
        arrival = self.process
        if arrival == "trace" and self.dataset is not None:
            raise WorkloadError("a dataset has no arrival times of its own: use poisson or gamma", "arrival")
        if arrival == "trace" and self.rate is not None:
            raise WorkloadError("a trace keeps its own arrivals: speed it up with rate_scale", "rate")
        if arrival != "trace" and self.rate is None:
            raise WorkloadError(f"{arrival} arrivals need a rate (requests per second)", "rate")
        if arrival != "trace" and self.rate_scale is not None:
            raise WorkloadError("rate_scale applies to a trace's own arrivals only; set the rate", "rate_scale")
        if arrival == "gamma" and self.cv is None:
            raise WorkloadError("gamma arrivals need a coefficient of variation", "cv")
        if arrival != "gamma" and self.cv is not None:
            raise WorkloadError("cv applies to gamma arrivals only", "cv")
        for name in ("input_len", "output_len"):
            if self.trace is not None and getattr(self, name) is not None:
                raise WorkloadError("a trace has its own lengths; mean lengths apply to a dataset", name)
        if self.dataset is not None and self.duration is None and self.max_requests is None:
            raise WorkloadError("a synthetic workload needs a duration or max_requests to end", "duration")

    @property
    def process(self) -> Arrival:
        """The arrival process, with the default resolved."""
        return self.arrival or ("trace" if self.trace is not None else "poisson")

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**out, "trace": None if self.trace is None else str(self.trace), "arrival": self.process}


def build_workload(spec: WorkloadSpec) -> tuple[WorkloadRequest, ...]:
    """The requests `spec` defines, sorted by arrival; the same spec (seed included) gives the same requests.

    Arrivals, prompt lengths and output lengths draw from separate streams of the seed, so changing the rate
    does not change which lengths a dataset draws first.
    """
    arrival_rng, prompt_rng, output_rng = np.random.default_rng(spec.seed).spawn(3)
    if spec.trace is None:
        assert spec.dataset is not None  # WorkloadSpec requires a trace or a dataset
        means = DATASETS[spec.dataset]
        times = _generated_times(spec, spec.max_requests, arrival_rng)
        prompts = geometric_lengths(spec.input_len or means.prompt, len(times), prompt_rng)
        outputs = geometric_lengths(spec.output_len or means.output, len(times), output_rng)
        requests = tuple(
            WorkloadRequest(float(t), int(p), int(o)) for t, p, o in zip(times, prompts, outputs, strict=True)
        )
    else:
        trace = load_trace(spec.trace)
        if spec.process == "trace":
            if not trace.timed:
                raise WorkloadError(f"{trace.path} has no {VIDUR_ARRIVAL} column: use poisson or gamma", "arrival")
            scale = spec.rate_scale or 1.0
            requests = tuple(replace(r, arrival=r.arrival / scale) for r in trace.requests)
        else:
            times = _generated_times(spec, len(trace.requests), arrival_rng)
            # With a duration there may be fewer times than trace rows: the trace is cut where time runs out.
            requests = tuple(replace(r, arrival=float(t)) for r, t in zip(trace.requests, times, strict=False))
    return clip_lengths(truncate(requests, duration=spec.duration, max_requests=spec.max_requests), spec.max_context)


def _generated_times(spec: WorkloadSpec, count: int | None, rng: np.random.Generator) -> np.ndarray:
    assert spec.rate is not None  # WorkloadSpec requires a rate for poisson and gamma arrivals
    return arrival_times(spec.rate, rng, cv=spec.cv or 1.0, count=count, duration=spec.duration)


def describe(requests: Sequence[WorkloadRequest]) -> dict[str, Any]:
    """Summary of a workload as offered: count, arrival span, offered rate and mean lengths."""
    span = requests[-1].arrival - requests[0].arrival if requests else 0.0
    return {
        "requests": len(requests),
        "span_s": span,
        "offered_rate_rps": (len(requests) - 1) / span if span > 0 else None,
        "mean_prompt_tokens": float(np.mean([r.prompt_tokens for r in requests])) if requests else None,
        "mean_output_tokens": float(np.mean([r.output_tokens for r in requests])) if requests else None,
    }
