"""The state model every scheduler level reads: requests, instances, and the macro-instance ring.

State is plain mutable dataclasses owned by one driver (router, simulator or test); schedulers read it and
return decisions, and the small `record_*`/`apply` methods here are the only way drivers change it, so every
driver keeps the same bookkeeping.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from .kv import DEFAULT_BLOCK_SIZE, blocks_for_tokens


@dataclass(frozen=True, slots=True)
class SLO:
    """Latency targets: time to first token, time per output token (seconds), and the share to meet them."""

    ttft: float
    tpot: float
    attainment: float = 0.9

    def __post_init__(self) -> None:
        if self.ttft <= 0 or self.tpot <= 0:
            raise ValueError(f"SLO latencies must be positive, got ttft={self.ttft} tpot={self.tpot}")
        if not 0 < self.attainment <= 1:
            raise ValueError(f"SLO attainment must be in (0, 1], got {self.attainment}")


def meets_slo(slo: SLO, ttft: float | None, tpot: float | None, ok: bool = True) -> bool:
    """Whether one request met both latency targets: it succeeded, had a first token within the TTFT SLO,
    and its mean time per later token (None below two tokens) was within the TPOT SLO. The one definition
    the router's window, the benchmark and the simulator all count by."""
    if not ok or ttft is None or ttft > slo.ttft:
        return False
    return tpot is None or tpot <= slo.tpot


class Phase(StrEnum):
    """What an instance's engine steps do right now (temporal disaggregation: never both)."""

    IDLE = "idle"
    PREFILL = "prefill"
    DECODE = "decode"


@dataclass(slots=True)
class Request:
    """One inference request as the schedulers see it: lengths and the times of its tokens."""

    id: str
    prompt_len: int
    arrival: float
    max_tokens: int | None = None
    predicted_output: int = 0
    generated: int = 0
    first_token_time: float | None = None
    last_token_time: float | None = None
    finish_time: float | None = None

    @property
    def prefilled(self) -> bool:
        return self.first_token_time is not None

    @property
    def finished(self) -> bool:
        return self.finish_time is not None

    @property
    def context_len(self) -> int:
        """Tokens in this request's KV cache: the prompt plus what it generated."""
        return self.prompt_len + self.generated

    @property
    def predicted_remaining(self) -> int:
        return max(self.predicted_output - self.generated, 0)

    def record_tokens(self, count: int, now: float) -> None:
        if self.first_token_time is None:
            self.first_token_time = now
        self.generated += count
        self.last_token_time = now

    def saved_tpot(self, tpot_slo: float, now: float) -> float:
        """Slack banked by decoding faster than the TPOT SLO: L·S_TPOT − (now − first token).

        L counts every token generated so far, the first included. Tokens are shown to users at the SLO's
        pace, so a positive value is time the request can stand paused without missing its TPOT target.
        """
        if self.first_token_time is None:
            return 0.0
        return self.generated * tpot_slo - (now - self.first_token_time)

    def ttft(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival

    def tpot(self) -> float | None:
        """Mean time per output token after the first; None until a second token exists."""
        if self.first_token_time is None or self.last_token_time is None or self.generated < 2:
            return None
        return (self.last_token_time - self.first_token_time) / (self.generated - 1)


class KVReservation(StrEnum):
    """What the router reserves in an instance's KV cache for a request it routes there."""

    PROMPT = "prompt"  # the EcoServe authors' code: prompt blocks only
    PROMPT_AND_OUTPUT = "prompt+output"  # ours: prompt plus the predicted output


def reserved_tokens(request: Request, mode: KVReservation) -> int:
    """Tokens of KV a request is counted for: what it holds now, or more if its prediction says it will."""
    if mode is KVReservation.PROMPT:
        return request.context_len
    return request.prompt_len + max(request.generated, request.predicted_output)


@dataclass(slots=True)
class InstanceState:
    """One serving instance (one engine) as its macro scheduler tracks it."""

    id: str
    kv_blocks_total: int
    block_size: int = DEFAULT_BLOCK_SIZE
    phase: Phase = Phase.IDLE
    last_activation: float | None = None
    accepting: bool = True
    requests: dict[str, Request] = field(default_factory=dict)
    kv_blocks_used_observed: int | None = None
    # Blocks reserved under each KVReservation mode, kept up to date by admit/record_tokens/release so that a
    # routing check costs O(1) instead of a pass over every request on the instance.
    _reserved: dict[KVReservation, int] = field(default_factory=lambda: dict.fromkeys(KVReservation, 0))

    def __post_init__(self) -> None:
        for r in self.requests.values():
            self._count(r, 1)

    def _count(self, r: Request, sign: int) -> None:
        for mode in KVReservation:
            self._reserved[mode] += sign * blocks_for_tokens(reserved_tokens(r, mode), self.block_size)

    def admit(self, request: Request) -> None:
        """A request routed here."""
        if request.id in self.requests:
            raise ValueError(f"request {request.id} is already on instance {self.id}")
        self.requests[request.id] = request
        self._count(request, 1)

    def release(self, request_id: str) -> Request | None:
        """A request leaves (finished, failed, or taken back to be routed again)."""
        r = self.requests.pop(request_id, None)
        if r is not None:
            self._count(r, -1)
        return r

    def pending_prefills(self) -> list[Request]:
        """Requests routed here that have no first token yet, oldest first."""
        return [r for r in self.requests.values() if not r.prefilled]

    def decoding(self) -> list[Request]:
        return [r for r in self.requests.values() if r.prefilled]

    def reserved_blocks(self, mode: KVReservation) -> int:
        return self._reserved[mode]

    def free_blocks(self, mode: KVReservation) -> int:
        """Blocks not yet promised: the stricter of the router's own accounting and the engine's report."""
        used = self.reserved_blocks(mode)
        if self.kv_blocks_used_observed is not None:
            used = max(used, self.kv_blocks_used_observed)
        return self.kv_blocks_total - used

    def record_first_token(self, request_id: str, now: float) -> None:
        self.record_tokens(request_id, 1, now)

    def record_tokens(self, request_id: str, count: int, now: float) -> None:
        r = self.requests[request_id]
        # The per-token hot path of router and simulator: update the reservations incrementally (the same
        # quantities as reserved_tokens, before and after).
        bs, prompt, predicted = self.block_size, r.prompt_len, r.predicted_output
        old_ctx = prompt + r.generated
        old_out = prompt + max(r.generated, predicted)
        r.record_tokens(count, now)
        new_ctx = old_ctx + count
        new_out = prompt + max(r.generated, predicted)
        reserved = self._reserved
        reserved[KVReservation.PROMPT] += -(-new_ctx // bs) + (old_ctx // -bs)
        if new_out != old_out:
            reserved[KVReservation.PROMPT_AND_OUTPUT] += -(-new_out // bs) + (old_out // -bs)

    def record_finish(self, request_id: str, now: float) -> Request:
        r = self.release(request_id)
        if r is None:
            raise KeyError(request_id)
        r.finish_time = now
        return r


@dataclass(slots=True)
class MacroInstanceState:
    """Instances in ring order, the active pointer of rolling activation, and the router's hold queue."""

    instances: list[InstanceState]
    active: int = 0
    held: deque[Request] = field(default_factory=deque)
    _index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [i.id for i in self.instances]
        if len(set(ids)) != len(ids):
            raise ValueError(f"instance ids must be unique, got {ids}")
        if self.instances and not 0 <= self.active < len(self.instances):
            raise ValueError(f"active index {self.active} outside the ring of {len(self.instances)}")
        self._reindex()

    def _reindex(self) -> None:
        self._index = {inst.id: k for k, inst in enumerate(self.instances)}

    def index_of(self, instance_id: str) -> int:
        return self._index[instance_id]

    def instance(self, instance_id: str) -> InstanceState:
        return self.instances[self.index_of(instance_id)]

    def activate(self, index: int, now: float) -> None:
        """Make `index` the instance that takes new prefills (rolling activation)."""
        if index != self.active or self.instances[index].last_activation is None:
            self.instances[index].last_activation = now
        self.active = index

    def add_instance(self, instance: InstanceState) -> None:
        """Join the end of the ring."""
        if instance.id in self._index:
            raise ValueError(f"instance {instance.id} is already in the ring")
        self.instances.append(instance)
        self._index[instance.id] = len(self.instances) - 1

    def remove_instance(self, instance_id: str) -> InstanceState:
        """Leave the ring; the active pointer keeps pointing at the same instance (or its successor)."""
        k = self.index_of(instance_id)
        inst = self.instances.pop(k)
        self._reindex()
        if k < self.active:
            self.active -= 1
        elif self.active >= len(self.instances):
            self.active = 0
        return inst
