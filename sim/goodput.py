"""Goodput: the highest request rate whose SLO attainment still meets the target, by bracketing search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .results import RunSummary


@dataclass(frozen=True, slots=True)
class GoodputResult:
    goodput: float  # req/s; 0 when even the lowest rate tried fails
    evaluations: tuple[RunSummary, ...]  # every rate tried, in the order tried


def search_goodput(
    evaluate: Callable[[float], RunSummary],
    target: float,
    start: float = 1.0,
    precision: float = 0.03,
    floor: float = 1e-3,
    ceiling: float = 1e5,
) -> GoodputResult:
    """Double (or halve) from `start` until the target is bracketed, then bisect until the bracket is within
    `precision` of its top. Runs with common random numbers (the same workload re-timed), so attainment is
    close to monotone in the rate; the answer is the highest rate seen to pass below the lowest seen to fail.
    """
    if not 0 < target <= 1:
        raise ValueError(f"target attainment must be in (0, 1], got {target}")
    tried: list[RunSummary] = []

    def passes(rate: float) -> bool:
        summary = evaluate(rate)
        tried.append(summary)
        return summary.attainment >= target

    lo, hi = 0.0, start
    if passes(start):
        lo = start
        while lo < ceiling:
            hi = lo * 2
            if not passes(hi):
                break
            lo = hi
        else:
            return GoodputResult(lo, tuple(tried))
    else:
        while hi > floor:
            lo = hi / 2
            if passes(lo):
                break
            hi = lo
        else:
            return GoodputResult(0.0, tuple(tried))
    while (hi - lo) > precision * hi:
        mid = (lo + hi) / 2
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return GoodputResult(lo, tuple(tried))
