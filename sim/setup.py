"""What a simulated deployment is: hardware, model, instances, SLO, and how engines are sized."""

from __future__ import annotations

from dataclasses import dataclass, field

from ecoserve.brain.costmodel import CostModel
from ecoserve.brain.engine import EngineConfig, EngineModel, StepPolicy
from ecoserve.brain.hardware import GPU, Interconnect, ModelShape
from ecoserve.brain.kv import kv_capacity_blocks
from ecoserve.brain.macro import SlackAggregate
from ecoserve.brain.state import SLO, KVReservation
from ecoserve.brain.steptime import MemoizedStepTime

from .core import SimInstance


@dataclass(frozen=True, slots=True)
class Deployment:
    """A cluster of `instances` identical engines, each `tp`×`pp` GPUs, and the links between them."""

    model: ModelShape
    gpu: GPU
    tp: int
    pp: int
    instances: int
    intra_link: Interconnect  # between the GPUs of one instance
    inter_link: Interconnect  # between instances (KV transfer of the disaggregated baselines)
    slo: SLO
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    chunk_tokens: int = 512  # Sarathi's per-step token budget
    kv_blocks: int | None = None  # default: from GPU memory
    slack_aggregate: SlackAggregate = SlackAggregate.QUANTILE
    kv_reservation: KVReservation = KVReservation.PROMPT_AND_OUTPUT
    max_tokens_known: bool = False  # does the router see each request's exact output length?
    cost: MemoizedStepTime = field(init=False)

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError(f"need at least one instance, got {self.instances}")
        cost = CostModel(self.model, self.gpu, tp=self.tp, pp=self.pp, tp_link=self.intra_link, pp_link=self.intra_link)
        object.__setattr__(self, "cost", MemoizedStepTime(cost))

    @property
    def blocks(self) -> int:
        if self.kv_blocks is not None:
            return self.kv_blocks
        return kv_capacity_blocks(self.model, self.gpu, self.tp, self.pp)

    def engine_config(self, token_budget: int | None = None) -> EngineConfig:
        budget = token_budget or self.max_num_batched_tokens
        return EngineConfig(self.blocks, 16, budget, self.max_num_seqs)

    def make_instances(self, count: int, policy: StepPolicy, prefix: str, token_budget: int | None = None):
        config = self.engine_config(token_budget)
        return [SimInstance(f"{prefix}{k}", EngineModel(config, self.cost, policy)) for k in range(count)]
