"""The non-disaggregated baselines (NoDG): every instance takes every kind of work, requests are balanced
across instances (each goes to the instance with the fewest unfinished requests), and nobody coordinates
when an instance prefills.

- `vllm`: vLLM's V0 engine as the EcoServe paper ran it (0.7.3, prefill priority, no chunked prefill): new
  prompts run at once in prefill-only steps and the instance's decodes wait for them.
- `vllm-mixed`: vLLM's V1 continuous batching: a prompt joins the very next step, next to every decode, up to
  the token budget.
- `sarathi`: Sarathi-Serve's chunked prefill: prompt chunks ride on decode steps under a small token budget.
"""

from __future__ import annotations

from ecoserve.brain.engine import StepPolicy, StepResult
from ecoserve.brain.state import Request
from ecoserve.brain.temporal import TemporalPolicy

from .core import Cluster, RequestRecord, SimInstance
from .policies import MixedPolicy
from .setup import Deployment


class ColocatedCluster(Cluster):
    def __init__(self, deployment: Deployment, policy: StepPolicy, token_budget: int) -> None:
        super().__init__()
        self.instances = deployment.make_instances(deployment.instances, policy, "i", token_budget=token_budget)

    def on_arrival(self, record: RequestRecord) -> None:
        inst = min(self.instances, key=lambda i: len(i.engine))
        self.admit(inst, record, Request(record.id, record.prompt_len, self.loop.now, max_tokens=record.output_len))

    def on_step(self, instance: SimInstance, result: StepResult) -> None:
        self.deliver(result)


def vllm(deployment: Deployment) -> ColocatedCluster:
    return ColocatedCluster(deployment, TemporalPolicy(), deployment.max_num_batched_tokens)


def vllm_mixed(deployment: Deployment) -> ColocatedCluster:
    budget = deployment.max_num_batched_tokens
    return ColocatedCluster(deployment, MixedPolicy(budget), budget)


def sarathi(deployment: Deployment) -> ColocatedCluster:
    return ColocatedCluster(deployment, MixedPolicy(deployment.chunk_tokens), deployment.chunk_tokens)
