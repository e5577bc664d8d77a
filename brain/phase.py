"""The instance phase policy: when an engine runs pure prefill steps and when pure decode steps.

Behind a router (`PhaseMode.PREFILL_PRIORITY`) the instance prefills whatever it was sent, as soon as it was
sent, then decodes: the router already decided that the pause is affordable. Standalone
(`PhaseMode.TDPIPE`) it follows TD-Pipe: prefills are admitted greedily while the *predicted peak* KV usage
(simulated at future decode offsets from each request's predicted remaining output) stays under a bound, and
decoding gives way to prefill when the decode batch's lost intensity exceeds what a prefill phase would
achieve. Functions here take plain request lists so the simulated engine and the vLLM scheduler share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from .kv import blocks_for_tokens
from .state import Phase, Request
from .steptime import StepTimeModel, decode_time, prefill_time

# TD-Pipe's decode offsets, with 0 (the usage right at admission) added: ours.
TDPIPE_OFFSETS: tuple[int, ...] = (0, 5, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class PhaseMode(StrEnum):
    PREFILL_PRIORITY = "prefill-priority"
    TDPIPE = "tdpipe"


@dataclass(frozen=True, slots=True)
class PhasePolicySettings:
    """TD-Pipe's constants were profiled on their hardware (0.9, 192, 256): settings, not truths."""

    mode: PhaseMode = PhaseMode.PREFILL_PRIORITY
    peak_bound: float = 0.9
    offsets: tuple[int, ...] = TDPIPE_OFFSETS
    decode_saturation: int = 192
    intensity_reference: int = 256
    pipeline_stages: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.peak_bound <= 1:
            raise ValueError(f"peak_bound must be in (0, 1], got {self.peak_bound}")
        if self.pipeline_stages < 1:
            raise ValueError(f"pipeline_stages must be >= 1, got {self.pipeline_stages}")


@dataclass(frozen=True, slots=True)
class PhaseDecision:
    """The phase of the next step(s) and, for prefill, which waiting requests may start (FCFS order)."""

    phase: Phase
    admit: tuple[str, ...] = ()
    reason: str = ""


def usage_profile(request: Request, block_size: int, offsets: Sequence[int]) -> list[int]:
    """Blocks `request` holds at each future decode offset m, or 0 once it is predicted to have finished."""
    remaining = request.predicted_remaining
    return [blocks_for_tokens(request.context_len + m, block_size) if remaining >= m else 0 for m in offsets]


def _plus(a: list[int], b: list[int]) -> list[int]:
    return [x + y for x, y in zip(a, b, strict=True)]


def _usage_totals(requests: Sequence[Request], block_size: int, offsets: Sequence[int]) -> list[int]:
    totals = [0] * len(offsets)
    for r in requests:
        totals = _plus(totals, usage_profile(r, block_size, offsets))
    return totals


def predicted_peak_blocks(requests: Sequence[Request], block_size: int, offsets: Sequence[int]) -> int:
    """TD-Pipe's simulated peak: max over m of Σ blocks of the requests still alive at offset m."""
    return max(_usage_totals(requests, block_size, offsets), default=0)


def greedy_admission(
    waiting: Sequence[Request],
    running: Sequence[Request],
    total_blocks: int,
    block_size: int,
    bound: float,
    offsets: Sequence[int],
) -> list[Request]:
    """Admit waiting requests FCFS while the predicted peak with them stays under `bound` × total blocks.

    A request is never admitted if its blocks do not fit right now; with nothing running the first request
    is admitted whenever it fits, so an empty engine never stalls on a pessimistic prediction.
    """
    totals = _usage_totals(running, block_size, offsets)
    held_now = sum(blocks_for_tokens(r.context_len, block_size) for r in running)
    admitted: list[Request] = []
    for r in waiting:
        need_now = blocks_for_tokens(r.context_len, block_size)
        candidate = _plus(totals, usage_profile(r, block_size, offsets))
        if held_now + need_now > total_blocks:
            break
        first_alone = not running and not admitted
        if not first_alone and max(candidate, default=0) >= bound * total_blocks:
            break
        admitted.append(r)
        totals = candidate
        held_now += need_now
    return admitted


def decode_intensity(model: StepTimeModel, running: Sequence[Request], settings: PhasePolicySettings) -> float:
    """Throughput of the current decode batch relative to a saturated one: (b/t(b)) / (ref/t(ref))."""
    b = len(running)
    if b >= settings.decode_saturation:
        return 1.0
    if b == 0:
        return 0.0
    mean_ctx = sum(r.context_len for r in running) / b
    ref = settings.intensity_reference
    t_b = decode_time(model, b, round(b * mean_ctx))
    t_ref = decode_time(model, ref, round(ref * mean_ctx))
    return (b / t_b) / (ref / t_ref)


def prefill_intensity(
    model: StepTimeModel, candidates: Sequence[Request], batch: int, settings: PhasePolicySettings
) -> float:
    """Share of a prefill phase over P pipeline stages that is not bubble (TD-Pipe); 1 without pipelining.

    prefill_time = Σ t(len_i)/P + max_i t(len_i)/P·(P−1); bubble = (max_i t(len_i)/P − t_dec(batch)/P)·(P−1).
    `batch` is the decode batch once the candidates join it (our reading of the paper's `batch + added`).
    """
    if not candidates:
        return 0.0
    p = settings.pipeline_stages
    times = [prefill_time(model, [r.prompt_len]) for r in candidates]
    longest = max(times)
    total = sum(times) / p + longest / p * (p - 1)
    ctx = sum(r.prompt_len for r in candidates)
    bubble = max(longest / p - decode_time(model, batch, ctx) / p, 0.0) * (p - 1)
    return (total - bubble) / total


def next_phase(
    current: Phase,
    waiting: Sequence[Request],
    running: Sequence[Request],
    total_blocks: int,
    block_size: int,
    model: StepTimeModel,
    settings: PhasePolicySettings,
) -> PhaseDecision:
    """The phase an instance runs next, given its waiting (unprefilled) and running (decoding) requests."""
    if not waiting:
        return PhaseDecision(Phase.DECODE if running else Phase.IDLE, reason="no_waiting")
    if settings.mode is PhaseMode.PREFILL_PRIORITY:
        return _prefill_priority(waiting, running, total_blocks, block_size)

    admit = greedy_admission(waiting, running, total_blocks, block_size, settings.peak_bound, settings.offsets)
    ids = tuple(r.id for r in admit)
    if current is Phase.PREFILL or not running:
        if admit:
            return PhaseDecision(Phase.PREFILL, ids, "greedy_prefill")
        return PhaseDecision(Phase.DECODE if running else Phase.IDLE, reason="kv_peak_bound")
    if len(running) > settings.decode_saturation:
        return PhaseDecision(Phase.DECODE, reason="decode_saturated")
    candidates = greedy_admission(waiting, running, total_blocks, block_size, 1.0, settings.offsets)
    i_dec = decode_intensity(model, running, settings)
    i_pre = prefill_intensity(model, candidates, len(running) + len(candidates), settings)
    if admit and i_dec < i_pre:
        return PhaseDecision(Phase.PREFILL, ids, f"intensity dec={i_dec:.3f} < pre={i_pre:.3f}")
    return PhaseDecision(Phase.DECODE, reason=f"intensity dec={i_dec:.3f} >= pre={i_pre:.3f}")


def _prefill_priority(
    waiting: Sequence[Request], running: Sequence[Request], total_blocks: int, block_size: int
) -> PhaseDecision:
    """Prefill everything that was sent, FCFS, as far as its prompt blocks fit next to the running decodes."""
    free = total_blocks - sum(blocks_for_tokens(r.context_len, block_size) for r in running)
    admit: list[str] = []
    for r in waiting:
        need = blocks_for_tokens(r.context_len, block_size)  # a preempted request recomputes its output too
        if need > free:
            break
        free -= need
        admit.append(r.id)
    if admit:
        return PhaseDecision(Phase.PREFILL, tuple(admit), "prefill_priority")
    return PhaseDecision(Phase.DECODE if running else Phase.IDLE, reason="kv_full")
