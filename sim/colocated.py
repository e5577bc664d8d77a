"""The non-disaggregated baselines (NoDG): every instance does prefill and decode in mixed steps.

`vllm`: continuous batching with prefill priority (a prompt joins the next step whole, next to the decodes,
up to the token budget); `sarathi`: chunked prefill with a small per-step budget. Requests are balanced
across instances: each goes to the instance with the fewest unfinished requests.
"""

from __future__ import annotations

from ecoserve.brain.engine import StepResult
from ecoserve.brain.state import Request

from .core import Cluster, RequestRecord, SimInstance
from .policies import MixedPolicy
from .setup import Deployment


class ColocatedCluster(Cluster):
    def __init__(self, deployment: Deployment, token_budget: int) -> None:
        super().__init__()
        self.instances = deployment.make_instances(
            deployment.instances, MixedPolicy(token_budget), "i", token_budget=token_budget
        )

    def on_arrival(self, record: RequestRecord) -> None:
        inst = min(self.instances, key=lambda i: len(i.engine))
        request = Request(record.id, record.prompt_len, self.loop.now, max_tokens=record.output_len)
        try:
            inst.engine.add(request)
        except ValueError:
            record.rejected = True
            return
        self.kick(inst)

    def on_step(self, instance: SimInstance, result: StepResult) -> None:
        now = result.now
        for rid in result.tokens:
            self.records[rid].token(now)
        for request in result.finished:
            self.records[request.id].finish = now


def vllm(deployment: Deployment) -> ColocatedCluster:
    return ColocatedCluster(deployment, deployment.max_num_batched_tokens)


def sarathi(deployment: Deployment) -> ColocatedCluster:
    return ColocatedCluster(deployment, deployment.chunk_tokens)
