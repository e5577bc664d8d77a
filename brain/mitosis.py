"""The mitosis planner: grow, shrink, split and merge the macro instances of a group, one step at a time.

Grow by one instance when TTFT suffers (EcoServe's Eq. 1: mean TTFT above the TTFT SLO; we also count
attainment below target and rejected requests); shrink by one when every macro instance keeps more saved TPOT
than it needs for a sustained window (Eq. 2: saved TPOT above S_TTFT·(n+1)/n). Sizes stay within
[N_l, N_u]: growing a full macro instance splits it in two, and shrinking when all are at N_l merges two.
Hysteresis (consecutive windows) and a cooldown are ours; the paper has none. The planner decides; the
operator (or the simulator) carries the decision out.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from .state import SLO


class Action(StrEnum):
    NONE = "none"
    GROW = "grow"
    SHRINK = "shrink"
    SPLIT = "split"
    MERGE = "merge"


@dataclass(frozen=True, slots=True)
class MacroObservation:
    """What one macro instance's router saw over the last window."""

    name: str
    size: int
    requests: int = 0
    ttft_mean: float | None = None
    ttft_attainment: float | None = None
    saved_tpot: float | None = None
    rejected: int = 0

    def to_json(self) -> dict[str, float | int | None]:
        """The figures a router reports (its name and size are the caller's: a CR's, or a local group's)."""
        return {
            "requests": self.requests,
            "ttft_mean": self.ttft_mean,
            "ttft_attainment": self.ttft_attainment,
            "saved_tpot": self.saved_tpot,
            "rejected": self.rejected,
        }

    @classmethod
    def from_json(cls, name: str, size: int, figures: Mapping[str, object]) -> MacroObservation:
        """A router's reported figures (`to_json`) for macro instance `name` of `size` instances."""

        def number(key: str) -> float | None:
            value = figures.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} must be a number, got {value!r}")
            return float(value)

        return cls(
            name,
            size,
            int(number("requests") or 0),
            number("ttft_mean"),
            number("ttft_attainment"),
            number("saved_tpot"),
            int(number("rejected") or 0),
        )


@dataclass(frozen=True, slots=True)
class MitosisSettings:
    slo: SLO
    min_instances: int
    max_instances: int
    max_total_instances: int | None = None
    cooldown: float = 120.0
    grow_windows: int = 1
    shrink_windows: int = 3
    attainment_margin: float = 0.02

    def __post_init__(self) -> None:
        if not 1 <= self.min_instances <= self.max_instances:
            raise ValueError(
                f"need 1 <= minInstances <= maxInstances, got {self.min_instances} and {self.max_instances}"
            )
        if 2 * self.min_instances > self.max_instances + 1:
            raise ValueError(
                "splitting a full macro instance must leave both halves at minInstances or more: need "
                f"2*minInstances <= maxInstances + 1, got {self.min_instances} and {self.max_instances}"
            )
        if self.grow_windows < 1 or self.shrink_windows < 1 or self.cooldown < 0:
            raise ValueError("grow_windows and shrink_windows must be >= 1 and cooldown >= 0")


@dataclass(frozen=True, slots=True)
class ScalingDecision:
    """One step of mitosis.

    GROW/SHRINK: `target` gains/loses one instance. SPLIT: `target` (full) gives `move` of its instances to a
    new sibling, which also gets one new instance. MERGE: `source` gives all its instances to `target` and
    disappears, and `remove` of them are released (1 when the merge is how the group shrinks).
    """

    action: Action
    reason: str
    target: str | None = None
    source: str | None = None
    move: int = 0
    remove: int = 0
    figures: tuple[tuple[str, float], ...] = ()


def _grow_signal(m: MacroObservation, slo: SLO) -> bool:
    if m.rejected > 0:
        return True
    if m.requests == 0:
        return False
    slow = m.ttft_mean is not None and m.ttft_mean > slo.ttft
    missed = m.ttft_attainment is not None and m.ttft_attainment < slo.attainment
    return slow or missed


def _shrink_signal(m: MacroObservation, s: MitosisSettings) -> bool:
    if m.requests == 0:
        return m.rejected == 0
    healthy = m.ttft_attainment is not None and m.ttft_attainment >= s.slo.attainment + s.attainment_margin
    band_top = s.slo.ttft * (m.size + 1) / m.size
    return healthy and m.saved_tpot is not None and m.saved_tpot > band_top


class MitosisPlanner:
    """Decides one scaling step per call; remembers only how many windows in a row signalled."""

    def __init__(self, settings: MitosisSettings) -> None:
        self.settings = settings
        self.grow_streak = 0
        self.shrink_streak = 0

    def plan(self, group: Sequence[MacroObservation], now: float, last_change: float | None = None) -> ScalingDecision:
        s = self.settings
        if not group:
            return ScalingDecision(Action.NONE, "empty_group")
        growing = [m for m in group if _grow_signal(m, s.slo)]
        shrinking = not growing and all(_shrink_signal(m, s) for m in group)
        self.grow_streak = self.grow_streak + 1 if growing else 0
        self.shrink_streak = self.shrink_streak + 1 if shrinking else 0
        if last_change is not None and now - last_change < s.cooldown:
            return ScalingDecision(Action.NONE, "cooldown")

        if out_of_bounds := self._restore_bounds(group):
            return out_of_bounds
        if growing and self.grow_streak >= s.grow_windows:
            return self._grow(group, growing[0])
        if shrinking and self.shrink_streak >= s.shrink_windows:
            return self._shrink(group)
        return self._neutral_merge(group)

    def _restore_bounds(self, group: Sequence[MacroObservation]) -> ScalingDecision | None:
        """A macro instance outside [N_l, N_u] (set by hand, or half-built) is moved back by one step."""
        s = self.settings
        for m in group:
            if m.size < s.min_instances:
                return ScalingDecision(Action.GROW, "below_min_instances", target=m.name)
            if m.size > s.max_instances:
                return ScalingDecision(Action.SHRINK, "above_max_instances", target=m.name)
        return None

    def _grow(self, group: Sequence[MacroObservation], trigger: MacroObservation) -> ScalingDecision:
        s = self.settings
        figures = _figures(trigger)
        total = sum(m.size for m in group)
        if s.max_total_instances is not None and total >= s.max_total_instances:
            return ScalingDecision(Action.NONE, "at_max_total_instances", figures=figures)
        self.grow_streak = 0
        partial = [m for m in group if m.size < s.max_instances]
        if partial:
            # Fill the partly filled macro instance closest to full first.
            target = max(partial, key=lambda m: (m.size, m is trigger, m.name))
            return ScalingDecision(Action.GROW, "ttft", target=target.name, figures=figures)
        move = (trigger.size + 1) // 2 - 1
        return ScalingDecision(Action.SPLIT, "ttft_at_max_instances", target=trigger.name, move=move, figures=figures)

    def _shrink(self, group: Sequence[MacroObservation]) -> ScalingDecision:
        s = self.settings
        self.shrink_streak = 0
        figures = _figures(min(group, key=lambda m: m.size))
        above = [m for m in group if m.size > s.min_instances]
        if above:
            target = min(above, key=lambda m: (m.size, m.name))
            return ScalingDecision(Action.SHRINK, "saved_tpot", target=target.name, figures=figures)
        if len(group) >= 2:
            source, target = sorted(group, key=lambda m: (m.size, m.name))[:2]
            return ScalingDecision(
                Action.MERGE,
                "saved_tpot_at_min_instances",
                target.name,
                source.name,
                remove=1,
                figures=figures,
            )
        return ScalingDecision(Action.NONE, "at_min_instances", figures=figures)

    def _neutral_merge(self, group: Sequence[MacroObservation]) -> ScalingDecision:
        """Two macro instances that fit in one together merge: fewer routers, longer rotations."""
        if len(group) >= 2:
            source, target = sorted(group, key=lambda m: (m.size, m.name))[:2]
            if source.size + target.size <= self.settings.max_instances:
                return ScalingDecision(Action.MERGE, "fits_in_one", target.name, source.name)
        return ScalingDecision(Action.NONE, "steady")


def _figures(m: MacroObservation) -> tuple[tuple[str, float], ...]:
    values = {
        "size": m.size,
        "requests": m.requests,
        "ttft_mean": m.ttft_mean,
        "ttft_attainment": m.ttft_attainment,
        "saved_tpot": m.saved_tpot,
        "rejected": m.rejected,
    }
    return tuple((k, float(v)) for k, v in values.items() if v is not None)


def sibling_name(group: str, taken: Collection[str]) -> str:
    """The name of a split's new macro instance: `GROUP-2`, `GROUP-3`, ... the first one not taken."""
    k = 2
    while f"{group}-{k}" in taken:
        k += 1
    return f"{group}-{k}"


def apply_to_sizes(sizes: Mapping[str, int], decision: ScalingDecision, new_name: str) -> dict[str, int]:
    """Group sizes after a decision (a SPLIT's sibling is called `new_name`): for drivers and tests."""
    out = dict(sizes)
    match decision.action:
        case Action.GROW:
            out[decision.target] += 1
        case Action.SHRINK:
            out[decision.target] -= 1
        case Action.SPLIT:
            out[decision.target] -= decision.move
            out[new_name] = decision.move + 1
        case Action.MERGE:
            out[decision.target] += out.pop(decision.source) - decision.remove
    return out
