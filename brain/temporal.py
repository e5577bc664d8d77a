"""Temporal disaggregation as an engine step policy: every step is prefill-only or decode-only.

The phase comes from the shared instance phase policy (brain.phase): prefill priority behind a router,
TD-Pipe standalone. A prefill step carries the admitted prompts (a long one is chunked over several steps
by the engine's token budget); a decode step carries every decoding request and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .engine import EngineModel, StepPlan
from .phase import PhasePolicySettings, next_phase
from .state import Phase


@dataclass(slots=True)
class TemporalPolicy:
    settings: PhasePolicySettings = field(default_factory=PhasePolicySettings)

    def plan(self, engine: EngineModel, now: float) -> StepPlan | None:
        prefill = engine.needs_prefill()
        decodes = engine.decodes()
        decision = next_phase(
            engine.phase,
            [e.request for e in prefill],
            [e.request for e in decodes],
            engine.config.kv_blocks,
            engine.config.block_size,
            engine.model,
            self.settings,
        )
        if decision.phase is Phase.PREFILL:
            pending = {e.id: e.pending for e in prefill}
            return StepPlan(Phase.PREFILL, tuple((rid, pending[rid]) for rid in decision.admit))
        if decision.phase is Phase.DECODE:
            return StepPlan(Phase.DECODE, tuple((e.id, 1) for e in decodes))
        return None
