"""The baselines' batching rules, as engine step policies (the brain's own is brain.temporal)."""

from __future__ import annotations

from dataclasses import dataclass

from ecoserve.brain.engine import EngineModel, StepPlan
from ecoserve.brain.state import Phase


@dataclass(frozen=True, slots=True)
class MixedPolicy:
    """Every step carries all running decodes plus prefill work up to `token_budget` tokens (FCFS, chunked).

    With a large budget this is vLLM's continuous batching with prefill priority (a new prompt joins the very
    next step, whole, next to the decodes); with a small one it is Sarathi-Serve's chunked prefill, which
    piggybacks prompt chunks on decodes so a long prompt never stalls them for long.
    """

    token_budget: int

    def plan(self, engine: EngineModel, now: float) -> StepPlan | None:
        decodes = engine.decodes()
        work: list[tuple[str, int]] = [(e.id, 1) for e in decodes]
        room = self.token_budget - len(work)
        for entry in engine.needs_prefill():
            if room <= 0:
                break
            take = min(entry.pending, room)
            work.append((entry.id, take))
            room -= take
        if not work:
            return None
        return StepPlan(Phase.PREFILL if len(work) > len(decodes) else Phase.DECODE, tuple(work))
