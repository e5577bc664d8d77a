"""The mitosis planner: grow, shrink, split and merge the macro instances of a group, one step at a time.

Grow when TTFT suffers (EcoServe's Eq. 1: mean TTFT above the TTFT SLO; we also count attainment below
target and rejected requests); shrink by one when every macro instance keeps more saved TPOT than it needs
for a sustained window (Eq. 2: saved TPOT above S_TTFT·(n+1)/n; nothing decoding and nothing held counts as
slack, ours). Sizes stay within [N_l, N_u]: growing a full macro instance splits it in two, and shrinking
when all are at N_l merges two. Hysteresis (consecutive windows) and a cooldown are ours; the paper has none.
The planner decides; the operator (or the simulator) carries the decision out.

Sizing (ours; `Sizing.ONE_AT_A_TIME` is the paper's rule): the paper adds one instance per step, which cannot
follow a load step — each step waits out a planning interval and a model load while the queue grows. With
`Sizing.CAPACITY` the planner learns what one serving instance finishes per window from windows where demand
outran it (arrivals above completions while the router held or turned away requests), grows by as many
instances as the arrivals need at a target utilisation (at most `max_grow_step`, none while instances already
starting cover them, as Kubernetes' HPA counts pods that are not ready yet), and shrinks only when the
instances left could carry the arrivals, so that the next grow does not undo a shrink.
"""

from __future__ import annotations

import math
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
    """What one macro instance's router saw over the last window.

    `size` is the instances the macro instance has (wanted, starting ones included); `serving` those its router
    routed to; `requests` the requests that finished in the window and `arrived` those that arrived in it
    (rejected ones included); `queued` the requests its router holds because no instance could take them. None
    where a router does not report it.
    """

    name: str
    size: int
    requests: int = 0
    ttft_mean: float | None = None
    ttft_attainment: float | None = None
    saved_tpot: float | None = None
    rejected: int = 0
    arrived: int | None = None
    serving: int | None = None
    queued: int | None = None

    @property
    def serving_instances(self) -> int:
        return self.size if self.serving is None else self.serving

    def to_json(self) -> dict[str, float | int | None]:
        """The figures a router reports (its name and size are the caller's: a CR's, or a local group's)."""
        return {
            "requests": self.requests,
            "ttft_mean": self.ttft_mean,
            "ttft_attainment": self.ttft_attainment,
            "saved_tpot": self.saved_tpot,
            "rejected": self.rejected,
            "arrived": self.arrived,
            "serving": self.serving,
            "queued": self.queued,
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

        def count(key: str) -> int | None:
            value = number(key)
            return None if value is None else int(value)

        return cls(
            name,
            size,
            int(number("requests") or 0),
            number("ttft_mean"),
            number("ttft_attainment"),
            number("saved_tpot"),
            int(number("rejected") or 0),
            count("arrived"),
            count("serving"),
            count("queued"),
        )


class Sizing(StrEnum):
    """How many instances a grow adds: the paper's one at a time, or as many as the learned capacity needs."""

    ONE_AT_A_TIME = "one-at-a-time"
    CAPACITY = "capacity"


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
    sizing: Sizing = Sizing.CAPACITY
    max_grow_step: int = 4  # most instances one grow adds (Sizing.CAPACITY)
    target_utilization: float = 0.85  # of the learned capacity, when sizing a grow or checking a shrink

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
        if self.max_grow_step < 1 or not 0 < self.target_utilization <= 1:
            raise ValueError(
                f"need maxGrowStep >= 1 and 0 < target utilization <= 1, got {self.max_grow_step} and "
                f"{self.target_utilization}"
            )


@dataclass(frozen=True, slots=True)
class ScalingDecision:
    """One step of mitosis.

    GROW: `target` gains `add` new instances; SHRINK: it loses one. SPLIT: `target` (full) gives `move` of its
    instances to a new sibling, which also gets `add` new instances. MERGE: `source` gives all its instances to
    `target` and disappears, and `remove` of them are released (1 when the merge is how the group shrinks).
    """

    action: Action
    reason: str
    target: str | None = None
    source: str | None = None
    move: int = 0
    remove: int = 0
    figures: tuple[tuple[str, float], ...] = ()
    add: int = 0


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
    # Nothing decoding right now (and nothing held) is all the slack there is: light load, not a missing figure.
    idle_now = m.saved_tpot is None and not m.queued
    return healthy and (idle_now or (m.saved_tpot is not None and m.saved_tpot > band_top))


class MitosisPlanner:
    """Decides one scaling step per call; remembers how many windows in a row signalled and, for
    `Sizing.CAPACITY`, what one serving instance finishes per window."""

    def __init__(self, settings: MitosisSettings) -> None:
        self.settings = settings
        self.grow_streak = 0
        self.shrink_streak = 0
        self.capacity: float | None = None  # requests one serving instance finishes per window

    def plan(self, group: Sequence[MacroObservation], now: float, last_change: float | None = None) -> ScalingDecision:
        s = self.settings
        if not group:
            return ScalingDecision(Action.NONE, "empty_group")
        growing = [m for m in group if _grow_signal(m, s.slo)]
        shrinking = not growing and all(_shrink_signal(m, s) for m in group)
        self.grow_streak = self.grow_streak + 1 if growing else 0
        self.shrink_streak = self.shrink_streak + 1 if shrinking else 0
        self._learn_capacity(group, growing)
        if last_change is not None and now - last_change < s.cooldown:
            return ScalingDecision(Action.NONE, "cooldown")

        if out_of_bounds := self._restore_bounds(group):
            return out_of_bounds
        if growing and self.grow_streak >= s.grow_windows:
            return self._grow(group, growing[0])
        if shrinking and self.shrink_streak >= s.shrink_windows:
            return self._shrink(group)
        return self._neutral_merge(group)

    def _learn_capacity(self, group: Sequence[MacroObservation], growing: Sequence[MacroObservation]) -> None:
        """Completions per serving instance in windows where demand outran them (arrivals above completions
        while the router had to hold or turn away requests) are what an instance can do; any healthy window's
        completions are a floor under that. Arrivals above completions alone are no proof: long requests
        still running do that too."""
        hot = {m.name for m in growing}
        measured = [m for m in group if m.arrived is not None and m.serving_instances > 0 and m.requests > 0]
        saturated = [
            m
            for m in measured
            if m.name in hot and (m.arrived or 0) > _SATURATED * m.requests and ((m.queued or 0) > 0 or m.rejected > 0)
        ]
        if saturated:
            self.capacity = sum(m.requests for m in saturated) / sum(m.serving_instances for m in saturated)
        elif self.capacity is not None and measured and not growing:
            floor = sum(m.requests for m in measured) / sum(m.serving_instances for m in measured)
            self.capacity = max(self.capacity, floor)

    def _needed(self, group: Sequence[MacroObservation]) -> int | None:
        """Instances the group's arrivals need at the target utilisation of the learned capacity; None when
        the planner sizes one at a time or cannot tell."""
        s = self.settings
        if s.sizing is Sizing.ONE_AT_A_TIME or not self.capacity or any(m.arrived is None for m in group):
            return None
        arrived = sum(m.arrived or 0 for m in group)
        return math.ceil(arrived / (self.capacity * s.target_utilization))

    def _restore_bounds(self, group: Sequence[MacroObservation]) -> ScalingDecision | None:
        """A macro instance outside [N_l, N_u] (set by hand, or half-built) is moved back by one step."""
        s = self.settings
        for m in group:
            if m.size < s.min_instances:
                return ScalingDecision(Action.GROW, "below_min_instances", target=m.name, add=1)
            if m.size > s.max_instances:
                return ScalingDecision(Action.SHRINK, "above_max_instances", target=m.name)
        return None

    def _grow(self, group: Sequence[MacroObservation], trigger: MacroObservation) -> ScalingDecision:
        s = self.settings
        figures = _figures(trigger)
        total = sum(m.size for m in group)
        if s.max_total_instances is not None and total >= s.max_total_instances:
            return ScalingDecision(Action.NONE, "at_max_total_instances", figures=figures)
        add = 1
        if (needed := self._needed(group)) is not None:
            figures += (("capacity", float(self.capacity or 0)), ("needed", float(needed)))
            starting = total - sum(m.serving_instances for m in group)
            add = min(max(needed - total, 0 if starting > 0 else 1), s.max_grow_step)
            if add == 0:
                return ScalingDecision(Action.NONE, "starting_instances_suffice", figures=figures)
        if s.max_total_instances is not None:
            add = min(add, s.max_total_instances - total)
        self.grow_streak = 0
        partial = [m for m in group if m.size < s.max_instances]
        if partial:
            # Fill the partly filled macro instance closest to full first.
            target = max(partial, key=lambda m: (m.size, m is trigger, m.name))
            add = min(add, s.max_instances - target.size)
            return ScalingDecision(Action.GROW, "ttft", target=target.name, figures=figures, add=add)
        move = (trigger.size + 1) // 2 - 1
        add = min(add, s.max_instances - move)
        return ScalingDecision(
            Action.SPLIT, "ttft_at_max_instances", target=trigger.name, move=move, figures=figures, add=add
        )

    def _shrink(self, group: Sequence[MacroObservation]) -> ScalingDecision:
        s = self.settings
        figures = _figures(min(group, key=lambda m: m.size))
        needed = self._needed(group)
        if needed is not None and needed > sum(m.size for m in group) - 1:
            figures += (("capacity", float(self.capacity or 0)), ("needed", float(needed)))
            return ScalingDecision(Action.NONE, "capacity_needed", figures=figures)
        self.shrink_streak = 0
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


# Arrivals this much above completions in a window mean demand outran what the serving instances could do.
_SATURATED = 1.05


def _figures(m: MacroObservation) -> tuple[tuple[str, float], ...]:
    values = {
        "size": m.size,
        "requests": m.requests,
        "ttft_mean": m.ttft_mean,
        "ttft_attainment": m.ttft_attainment,
        "saved_tpot": m.saved_tpot,
        "rejected": m.rejected,
        "arrived": m.arrived,
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
            out[decision.target] += decision.add
        case Action.SHRINK:
            out[decision.target] -= 1
        case Action.SPLIT:
            out[decision.target] -= decision.move
            out[new_name] = decision.move + decision.add
        case Action.MERGE:
            out[decision.target] += out.pop(decision.source) - decision.remove
    return out
