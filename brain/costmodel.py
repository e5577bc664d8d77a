"""Step times from first principles: a roofline per kernel, with efficiency factors fitted on measurements.

Why analytical: the simulator and the router must price steps for GPUs, models and parallel layouts that were
never profiled, so the model is built from a model's shape and a GPU's datasheet, and only a handful of
efficiency factors are learned from measurements (Vidur's profiles of one transformer layer on H100 and A100,
see brain.profiles).

One layer on one tensor-parallel GPU shard costs
  * the non-attention linear work (`layer_linear_time`): four GEMMs (QKV projection, output projection, MLP
    up/gate, MLP down) and six elementwise kernels (two RMSNorms, rotary embedding, the MLP activation, two
    residual adds). A GEMM of M tokens by a K×N weight shard is a roofline: the larger of its FLOPs at the
    achieved compute rate and its bytes (weights + activations) at the achieved bandwidth, plus a fixed
    per-kernel cost. Small GEMMs cannot fill the machine: a GEMM computes as if it had `gemm_fill_tokens` more
    rows (tile and wave quantisation, pipeline fill), which is what bends the measured curve between the
    memory-bound and the compute-bound regime. Elementwise kernels are bandwidth-bound with their own
    (lower) achieved bandwidth. Every kernel has the same fixed cost (launch, ramp-up, tail): the profiles
    determine only the total fixed cost of a layer, not how it splits between GEMMs and elementwise kernels.
  * attention, which the profiles do not measure, from first principles: prefill is causal attention of the
    new tokens over cached + new tokens (FLOPs of QKᵀ and PV), decode reads every token's K and V (bytes);
    both are a roofline with the GEMM factors.
  * two all-reduces of the hidden states under tensor parallelism (after attention and after the MLP), as a
    ring: 2·(tp−1)/tp · bytes / bandwidth + latency.
A step also embeds its tokens and runs the final norm and the LM head (for one token per sequence) once.

Pipeline parallelism splits the layers over `pp` stages on the `pp_link`. One step's latency is the sum of the
stages' times plus (pp−1) transfers of the hidden states and residual between stages: a stage holds every
token of the step, so pp never shortens a step; what it buys (several micro-batches in flight) is the
simulator's business, not the step's.

Every term grows with tokens, context and sequences, so the model is monotone: more work never costs less.
"""

from __future__ import annotations

import bisect
import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .hardware import GPU, INTERCONNECTS, Interconnect, ModelShape
from .steptime import BatchShape, StepTimeModel

KERNELS_PER_LAYER = 10  # four GEMMs, six elementwise kernels


@dataclass(frozen=True, slots=True)
class Efficiency:
    """What fraction of a datasheet rate kernels achieve, and what each kernel costs regardless of size."""

    gemm_compute: float  # fraction of peak dense FLOP/s reached by large GEMMs
    gemm_fill_tokens: float  # rows a GEMM pays for on top of its tokens (tile/wave quantisation)
    gemm_memory: float  # fraction of HBM bandwidth reached by GEMMs streaming their weights
    elementwise_memory: float  # fraction of HBM bandwidth reached by norms, rotary, activation, adds
    kernel_overhead_s: float  # fixed cost of any one kernel

    def coefficients(self) -> tuple[float, ...]:
        """The factors as the coefficients the model's time is linear in (see `CostModel.linear_terms`)."""
        return (
            1 / self.gemm_compute,
            self.gemm_fill_tokens / self.gemm_compute,
            1 / self.gemm_memory,
            1 / self.elementwise_memory,
            self.kernel_overhead_s,
        )

    @classmethod
    def from_coefficients(cls, c: Sequence[float]) -> Efficiency:
        if min(c[0], c[2], c[3]) <= 0 or min(c[1], c[4]) < 0:
            raise ValueError(f"fitted coefficients {list(c)} are not physical (a negative rate or cost)")
        return cls(1 / c[0], c[1] / c[0], 1 / c[2], 1 / c[3], c[4])


# Fitted by `brain.profiles.calibrate` on the four shared Vidur profiles (H100 and A100, Llama-2-7B and -70B,
# TP 1-8, 1-4096 tokens); shared by every GPU, which enters only through its datasheet numbers. Large GEMMs
# reach 76% of peak FLOP/s, weight streaming 83% of HBM bandwidth, elementwise kernels 55%; a GEMM pays for
# ~95 extra rows; each kernel costs ~3.7 µs on top. Median |error| 2.5-4.6% per file, p90 8.9-14%.
DEFAULT_EFFICIENCY = Efficiency(
    gemm_compute=0.7589,
    gemm_fill_tokens=95.30,
    gemm_memory=0.8250,
    elementwise_memory=0.5482,
    kernel_overhead_s=3.722e-6,
)

NVLINK = INTERCONNECTS["nvlink"]


@dataclass(frozen=True, slots=True)
class CostModel:
    """Analytical step time of one instance: `shape` on `tp`×`pp` GPUs of one kind."""

    shape: ModelShape
    gpu: GPU
    tp: int = 1
    pp: int = 1
    tp_link: Interconnect = NVLINK
    pp_link: Interconnect = NVLINK
    efficiency: Efficiency = DEFAULT_EFFICIENCY
    step_overhead_s: float = 0.0  # host-side cost per step (scheduling, sampling); not in kernel profiles

    def __post_init__(self) -> None:
        if self.tp < 1 or self.pp < 1:
            raise ValueError(f"tp and pp must be at least 1, got tp={self.tp} pp={self.pp}")
        if self.shape.num_heads % self.tp:
            raise ValueError(f"{self.shape.num_heads} attention heads do not split over tp={self.tp}")
        if self.pp > self.shape.num_layers:
            raise ValueError(f"pp={self.pp} exceeds the {self.shape.num_layers} layers")

    # --- the linear work of one layer, as the profiles measure it ---

    def _gemm_terms(self, tokens: float, k: float, n: float) -> tuple[float, float, float]:
        """(compute, fill, memory) seconds at datasheet rates of a tokens×k by k×n GEMM; only its bound is
        non-zero."""
        e, gpu = self.efficiency, self.gpu
        compute = 2 * tokens * k * n / gpu.peak_flops
        fill = 2 * k * n / gpu.peak_flops
        memory = self.shape.dtype_bytes * (k * n + tokens * (k + n)) / gpu.mem_bandwidth
        if (compute + e.gemm_fill_tokens * fill) / e.gemm_compute >= memory / e.gemm_memory:
            return compute, fill, 0.0
        return 0.0, 0.0, memory

    def _gemm_time(self, tokens: float, k: float, n: float) -> float:
        compute, fill, memory = self._gemm_terms(tokens, k, n)
        c = self.efficiency.coefficients()
        return c[0] * compute + c[1] * fill + c[2] * memory + c[4]

    def linear_terms(self, num_tokens: int) -> tuple[float, ...]:
        """One layer's non-attention work as five terms whose dot product with `Efficiency.coefficients()` is
        its time: GEMM compute, GEMM fill, GEMM memory, elementwise memory (seconds at datasheet rates), and
        the number of kernels."""
        s, tp = self.shape, self.tp
        h, q = s.hidden_size, s.num_heads // tp * s.head_dim
        kv = s.kv_heads_per_shard(tp) * s.head_dim
        inter = s.intermediate_size / tp
        gemms = ((h, q + 2 * kv), (q, h), (h, s.mlp_up_width / tp), (inter, h))
        compute = fill = memory = 0.0
        for k, n in gemms:
            c, f, m = self._gemm_terms(num_tokens, k, n)
            compute, fill, memory = compute + c, fill + f, memory + m
        # Elements read + written per token: two norms (h in, h out), rotary (q and k in place), the
        # activation (gated: 2·inter in, inter out), two residual adds (2h in, h out).
        elements = 2 * 2 * h + 2 * (q + kv) + (3 if s.gated_mlp else 2) * inter + 2 * 3 * h
        elementwise = num_tokens * elements * s.dtype_bytes / self.gpu.mem_bandwidth
        return (compute, fill, memory, elementwise, KERNELS_PER_LAYER)

    def layer_linear_time(self, num_tokens: int) -> float:
        """Seconds of one layer's non-attention work on one GPU shard (what the profiles measure)."""
        if num_tokens <= 0:
            return 0.0
        terms = self.linear_terms(num_tokens)
        return sum(t * c for t, c in zip(terms, self.efficiency.coefficients(), strict=True))

    # --- the rest of a step ---

    def _roofline(self, flops: float, nbytes: float) -> float:
        e, gpu = self.efficiency, self.gpu
        return e.kernel_overhead_s + max(
            flops / (e.gemm_compute * gpu.peak_flops), nbytes / (e.gemm_memory * gpu.mem_bandwidth)
        )

    def _elementwise_time(self, nbytes: float) -> float:
        e = self.efficiency
        return e.kernel_overhead_s + nbytes / (e.elementwise_memory * self.gpu.mem_bandwidth)

    def attention_time(self, batch: BatchShape) -> float:
        """One layer's attention on one shard: a prefill kernel and a decode kernel, each a roofline."""
        s, tp, dt = self.shape, self.tp, self.shape.dtype_bytes
        heads = s.num_heads // tp
        q = heads * s.head_dim
        kv = s.kv_heads_per_shard(tp) * s.head_dim
        total = 0.0
        chunks = [c for c in batch.prefills if c.new_tokens > 0]
        if chunks:
            # Causal: new token i sees the cached tokens and new tokens 1..i.
            pairs = sum(c.new_tokens * c.cached_tokens + c.new_tokens * (c.new_tokens + 1) / 2 for c in chunks)
            # Q read and O written per new token; K, V read for every visible token and written for new ones.
            elements = sum(2 * c.new_tokens * (q + kv) + 2 * (c.cached_tokens + c.new_tokens) * kv for c in chunks)
            total += self._roofline(4 * heads * s.head_dim * pairs, elements * dt)
        if batch.decode_count > 0:
            context = batch.decode_context
            elements = 2 * context * kv + 2 * batch.decode_count * (q + kv)
            total += self._roofline(4 * heads * s.head_dim * context, elements * dt)
        return total

    def _all_reduce_time(self, nbytes: float) -> float:
        """Ring all-reduce of `nbytes` over the tp GPUs: each sends and receives 2·(tp−1)/tp of the data."""
        if self.tp == 1:
            return 0.0
        link = self.tp_link
        return 2 * (self.tp - 1) / self.tp * nbytes / link.bandwidth + link.latency

    def _ends_time(self, num_tokens: int, num_seqs: int) -> float:
        """Once per step: embedding (vocab-parallel, so all-reduced), final norm, LM head for one token per
        sequence, and gathering the vocab-sharded logits."""
        s, tp = self.shape, self.tp
        hidden_bytes = num_tokens * s.hidden_size * s.dtype_bytes
        total = 2 * self._elementwise_time(2 * hidden_bytes) + self._all_reduce_time(hidden_bytes)
        total += self._gemm_time(num_seqs, s.hidden_size, s.vocab_size / tp)
        if tp > 1:
            logits = num_seqs * s.vocab_size * s.dtype_bytes
            total += (tp - 1) / tp * logits / self.tp_link.bandwidth + self.tp_link.latency
        return total

    def _stage_transfer_time(self, num_tokens: int) -> float:
        """Hidden states and residual of every token, sent from one pipeline stage to the next."""
        nbytes = 2 * num_tokens * self.shape.hidden_size * self.shape.dtype_bytes
        return nbytes / self.pp_link.bandwidth + self.pp_link.latency

    def step_time(self, batch: BatchShape) -> float:
        tokens = batch.num_tokens
        if tokens <= 0:
            return 0.0
        s = self.shape
        hidden_bytes = tokens * s.hidden_size * s.dtype_bytes
        layer = self.layer_linear_time(tokens) + self.attention_time(batch) + 2 * self._all_reduce_time(hidden_bytes)
        num_seqs = sum(1 for c in batch.prefills if c.new_tokens > 0) + batch.decode_count
        return (
            s.num_layers * layer
            + self._ends_time(tokens, num_seqs)
            + (self.pp - 1) * self._stage_transfer_time(tokens)
            + self.step_overhead_s
        )


# --- calibration ---


@dataclass(frozen=True, slots=True)
class LayerSample:
    """One measured non-attention layer time of one GPU shard."""

    shape: ModelShape
    gpu: GPU
    tp: int
    num_tokens: int
    seconds: float


_NEUTRAL_START = Efficiency(0.5, 0.0, 0.5, 0.5, 0.0)


def fit_efficiency(samples: Sequence[LayerSample], start: Efficiency = _NEUTRAL_START) -> Efficiency:
    """Least-squares fit of the efficiency factors on relative error over `samples`.

    The layer time is linear in `Efficiency.coefficients()` once each GEMM's bound (compute or memory) is
    known, and the bound depends on the factors; so alternate: pick the bounds with the current factors,
    solve the linear problem, and stop when the bounds repeat.
    """
    if not samples:
        raise ValueError("no samples to calibrate on")
    if min(x.seconds for x in samples) <= 0:
        raise ValueError("every measured time must be positive")
    measured = np.array([x.seconds for x in samples])
    efficiency, seen = start, set()
    while True:
        terms = np.array(
            [CostModel(x.shape, x.gpu, x.tp, efficiency=efficiency).linear_terms(x.num_tokens) for x in samples]
        )
        key = terms.tobytes()  # the terms change only when some GEMM changes bound
        if key in seen:
            return efficiency
        seen.add(key)
        coefficients, *_ = np.linalg.lstsq(terms / measured[:, None], np.ones(len(samples)), rcond=None)
        efficiency = Efficiency.from_coefficients([float(c) for c in coefficients])


# --- a measured prefill table ---


@dataclass(frozen=True, slots=True)
class MeasuredPrefillTable:
    """Prefill time measured per prompt length, used for prefill-only steps; other steps go to `fallback`.

    A step of whole prompts (no decodes, no cached context) is looked up as one prompt of the step's total
    tokens: the linear work, the bulk of a prefill, depends on the total, and the attention of several prompts
    is at most that of one prompt of their total length, so the estimate errs on the safe side of a TTFT
    check. Between rows the time is interpolated linearly; beyond the last row it scales in proportion to the
    length (as the EcoServe authors' code does); below the first row it is the first row's time, because a
    step's fixed costs do not shrink with the prompt. Chunks with cached context (chunked prefill) and steps
    with decodes go to the fallback, which models attention over the context.
    """

    prompt_lens: tuple[int, ...]
    prefill_times: tuple[float, ...]
    fallback: StepTimeModel

    def __post_init__(self) -> None:
        if not self.prompt_lens or len(self.prompt_lens) != len(self.prefill_times):
            raise ValueError("a prefill table needs one time per prompt length, and at least one row")
        if any(b <= a for a, b in zip(self.prompt_lens, self.prompt_lens[1:], strict=False)):
            raise ValueError(f"prompt lengths must be distinct and ascending: {self.prompt_lens}")
        if self.prompt_lens[0] <= 0 or self.prefill_times[0] <= 0:
            raise ValueError("prompt lengths and prefill times must be positive")
        if any(b < a for a, b in zip(self.prefill_times, self.prefill_times[1:], strict=False)):
            raise ValueError("prefill time must not fall as the prompt grows (a step-time model is monotone)")

    def prefill_seconds(self, tokens: int) -> float:
        """Measured time of prefilling `tokens` prompt tokens in one step."""
        lens, times = self.prompt_lens, self.prefill_times
        if tokens <= 0:
            return 0.0
        if tokens >= lens[-1]:
            return times[-1] * tokens / lens[-1]
        if tokens <= lens[0]:
            return times[0]
        i = bisect.bisect_right(lens, tokens)
        x0, x1, y0, y1 = lens[i - 1], lens[i], times[i - 1], times[i]
        return y0 + (y1 - y0) * (tokens - x0) / (x1 - x0)

    def step_time(self, batch: BatchShape) -> float:
        if batch.decode_count == 0 and all(c.cached_tokens == 0 for c in batch.prefills):
            return self.prefill_seconds(batch.num_tokens)
        return self.fallback.step_time(batch)


PREFILL_TABLE_COLUMNS = ("prompt_len", "prefill_time_s")


def load_prefill_table(path: Path, fallback: StepTimeModel) -> MeasuredPrefillTable:
    """Read a CSV with a header and the columns `prompt_len` (tokens) and `prefill_time_s` (seconds of one
    prefill-only step over one prompt of that length), one row per length, in any order; other columns are
    ignored."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in PREFILL_TABLE_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: prefill table lacks column(s) {', '.join(missing)}; has {reader.fieldnames}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append((int(row["prompt_len"]), float(row["prefill_time_s"])))
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line}: not a number in {row}") from None
    rows.sort()
    try:
        return MeasuredPrefillTable(tuple(n for n, _ in rows), tuple(t for _, t in rows), fallback)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
