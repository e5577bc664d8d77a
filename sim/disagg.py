"""The fully disaggregated baselines (FuDG): separate prefill and decode pools, KV shipped between them.

A request is prefilled on the least-loaded prefill instance (which samples its first token), then its
prompt's KV cache (prompt tokens × the model's KV bytes per token) crosses the inter-instance link to the
least-loaded decode instance, which decodes the rest. The link is modelled per NIC: a transfer occupies the
sender's egress and the receiver's ingress for latency + bytes/bandwidth, so concurrent transfers queue
(contention). The user sees the first token when the KV has arrived: TTFT includes the transfer.
The prefill instance frees the KV at once (a real one holds it until sent: a simplification in the
baseline's favour). `distserve` splits the instances half and half; `mooncake` searches the split.
"""

from __future__ import annotations

from ecoserve.brain.engine import StepResult
from ecoserve.brain.state import Request

from .core import Cluster, RequestRecord, SimInstance
from .policies import MixedPolicy
from .setup import Deployment


class DisaggregatedCluster(Cluster):
    def __init__(self, deployment: Deployment, prefill_instances: int) -> None:
        super().__init__()
        d = deployment
        if not 1 <= prefill_instances < d.instances:
            raise ValueError(f"need 1..{d.instances - 1} prefill instances of {d.instances}, got {prefill_instances}")
        policy = MixedPolicy(d.max_num_batched_tokens)
        self.prefill = d.make_instances(prefill_instances, policy, "p")
        self.decode = d.make_instances(d.instances - prefill_instances, policy, "d")
        self._prefill_ids = {i.id for i in self.prefill}
        self.link = d.inter_link
        self.kv_bytes_per_token = d.model.kv_bytes_per_token
        self.egress_free = {i.id: 0.0 for i in self.prefill}
        self.ingress_free = {i.id: 0.0 for i in self.decode}
        self.inbound = {i.id: 0 for i in self.decode}
        self.transfers = 0
        self.transfer_seconds = 0.0

    def transfer_time(self, prompt_len: int) -> float:
        return self.link.latency + prompt_len * self.kv_bytes_per_token / self.link.bandwidth

    def on_arrival(self, record: RequestRecord) -> None:
        inst = min(self.prefill, key=lambda i: len(i.engine))
        self.admit(inst, record, Request(record.id, record.prompt_len, self.loop.now, max_tokens=1))

    def on_step(self, instance: SimInstance, result: StepResult) -> None:
        if instance.id in self._prefill_ids:
            for request in result.finished:
                self._ship(self.records[request.id], instance.id, result.now)
        else:
            self.deliver(result)

    def _ship(self, record: RequestRecord, source: str, now: float) -> None:
        target = min(self.decode, key=lambda i: len(i.engine) + self.inbound[i.id])
        start = max(now, self.egress_free[source], self.ingress_free[target.id])
        end = start + self.transfer_time(record.prompt_len)
        self.egress_free[source] = self.ingress_free[target.id] = end
        self.inbound[target.id] += 1
        self.transfers += 1
        self.transfer_seconds += end - start
        self.loop.at(end, self._arrived, (record, target))

    def _arrived(self, arg: tuple[RequestRecord, SimInstance]) -> None:
        record, target = arg
        now = self.loop.now
        self.inbound[target.id] -= 1
        record.token(now)  # the first token reaches the user with its KV
        if record.output_len <= 1:
            record.finish = now
            return
        request = Request(record.id, record.prompt_len, now, max_tokens=record.output_len, generated=1)
        self.admit(target, record, request, computed=record.prompt_len)


def distserve(deployment: Deployment) -> DisaggregatedCluster:
    return DisaggregatedCluster(deployment, max(deployment.instances // 2, 1))
