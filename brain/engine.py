"""A step-level model of one vLLM engine: queues, paged KV blocks, preemption by recompute, step times.

The simulated worker runs it on the wall clock and the simulator on a virtual one: `plan_step(now)` picks a
batch (through a pluggable `StepPolicy`) and prices it with the cost model; `finish_step(step, now)` books
the tokens it produced. The mechanics follow vLLM: a request holds KV blocks for the tokens it has computed
plus those being computed; when a running request cannot get a block, the most recently admitted running
request is preempted (its blocks freed, to be recomputed from scratch) and goes back to the head of the
waiting queue. What goes into a step is the policy's business (temporal disaggregation here, mixed or
chunked batching in the simulator's baselines).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from .kv import DEFAULT_BLOCK_SIZE, blocks_for_tokens
from .state import Phase, Request
from .steptime import BatchShape, PrefillChunk, StepTimeModel


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """vLLM's sizing knobs: KV blocks, block size, tokens and sequences per step."""

    kv_blocks: int
    block_size: int = DEFAULT_BLOCK_SIZE
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256

    def __post_init__(self) -> None:
        if min(self.kv_blocks, self.block_size, self.max_num_batched_tokens, self.max_num_seqs) < 1:
            raise ValueError(f"engine sizes must all be >= 1, got {self}")

    @property
    def capacity_tokens(self) -> int:
        return self.kv_blocks * self.block_size


@dataclass(slots=True)
class EngineRequest:
    """A request inside the engine: the shared `Request` plus how much of it has KV computed."""

    request: Request
    computed: int = 0
    blocks: int = 0
    preemptions: int = 0
    is_running: bool = False

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens: what a recompute after preemption must prefill again."""
        return self.request.prompt_len + self.request.generated

    @property
    def pending(self) -> int:
        """Tokens still to compute before the next token can be sampled (1 for a decode)."""
        return self.num_tokens - self.computed

    @property
    def decoding(self) -> bool:
        return self.request.generated > 0 and self.pending == 1

    @property
    def target_tokens(self) -> int:
        return self.request.max_tokens if self.request.max_tokens is not None else 0


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What a policy wants computed: (request id, tokens) in priority order, and the phase it stands for."""

    phase: Phase
    work: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Step:
    """A step being executed: the work that got KV, its shape and how long it takes."""

    phase: Phase
    work: tuple[tuple[str, int], ...]
    batch: BatchShape
    duration: float
    started: float
    preempted: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StepResult:
    """Tokens produced by a step (one per request that sampled), requests finished, when."""

    tokens: tuple[str, ...]
    finished: tuple[Request, ...]
    now: float


class StepPolicy(Protocol):
    """Chooses the work of the next step from the engine's queues; returns None to stay idle."""

    def plan(self, engine: EngineModel, now: float) -> StepPlan | None: ...


class EngineModel:
    """One engine's queues and KV cache, stepping under a policy and priced by a step-time model."""

    def __init__(self, config: EngineConfig, model: StepTimeModel, policy: StepPolicy) -> None:
        self.config = config
        self.model = model
        self.policy = policy
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []
        self.phase = Phase.IDLE
        self.free_blocks = config.kv_blocks
        self.preemptions = 0
        self._by_id: dict[str, EngineRequest] = {}

    # --- queries -------------------------------------------------------------------------------------

    def get(self, request_id: str) -> EngineRequest | None:
        return self._by_id.get(request_id)

    def needs_prefill(self) -> list[EngineRequest]:
        """Running requests mid-prefill (chunked or recomputing) first, then the waiting queue, in order."""
        return [e for e in self.running if not e.decoding] + list(self.waiting)

    def decodes(self) -> list[EngineRequest]:
        return [e for e in self.running if e.decoding]

    @property
    def used_blocks(self) -> int:
        return self.config.kv_blocks - self.free_blocks

    @property
    def kv_usage(self) -> float:
        return self.used_blocks / self.config.kv_blocks

    def __len__(self) -> int:
        return len(self._by_id)

    # --- changes -------------------------------------------------------------------------------------

    def add(self, request: Request, computed: int = 0) -> EngineRequest:
        """Queue a request; refuse one that could never fit the KV cache even alone.

        `computed` tokens of KV arrive with it from elsewhere (a prefill instance of a disaggregated system):
        it needs their blocks, not their compute.
        """
        if request.id in self._by_id:
            raise ValueError(f"request {request.id!r} is already in the engine")
        if request.prompt_len < 1:
            raise ValueError("a request needs at least one prompt token")
        total = request.prompt_len + (request.max_tokens or 0)
        if total > self.config.capacity_tokens:
            raise ValueError(
                f"request needs {total} tokens of KV cache (prompt {request.prompt_len} + max_tokens "
                f"{request.max_tokens}) but the engine holds {self.config.capacity_tokens}"
            )
        entry = EngineRequest(request, computed=computed)
        self.waiting.append(entry)
        self._by_id[request.id] = entry
        return entry

    def abort(self, request_id: str) -> bool:
        """Drop a request (client gone); its blocks are freed at once. False if it was not here."""
        entry = self._by_id.pop(request_id, None)
        if entry is None:
            return False
        if entry.is_running:
            self.running.remove(entry)
            entry.is_running = False
        else:
            self.waiting.remove(entry)
        self._release(entry)
        return True

    def plan_step(self, now: float) -> Step | None:
        """The next step: the policy's plan, cut to what gets KV blocks (preempting if needed), priced."""
        plan = self.policy.plan(self, now)
        if plan is None or not plan.work:
            self.phase = Phase.IDLE
            return None
        work, preempted = self._allocate(plan.work)
        if not work:
            self.phase = Phase.IDLE
            return None
        self.phase = plan.phase
        batch = self._shape(work)
        return Step(plan.phase, work, batch, self.model.step_time(batch), now, preempted)

    def finish_step(self, step: Step, now: float) -> StepResult:
        """Book a step's results: computed tokens, one sampled token per request whose KV is complete."""
        tokens: list[str] = []
        finished: list[Request] = []
        for rid, count in step.work:
            entry = self._by_id.get(rid)
            if entry is None or not entry.is_running:
                continue  # aborted or preempted while the step ran
            entry.computed += count
            if entry.computed < entry.num_tokens:
                continue  # a chunk of a longer prefill: no token yet
            r = entry.request
            r.generated += 1
            if r.first_token_time is None:
                r.first_token_time = now
            r.last_token_time = now
            tokens.append(rid)
            if r.generated >= entry.target_tokens:
                r.finish_time = now
                self.running.remove(entry)
                entry.is_running = False
                del self._by_id[rid]
                self._release(entry)
                finished.append(r)
        return StepResult(tuple(tokens), tuple(finished), now)

    # --- mechanics -----------------------------------------------------------------------------------

    def _release(self, entry: EngineRequest) -> None:
        self.free_blocks += entry.blocks
        entry.blocks = 0

    def _preempt(self, entry: EngineRequest) -> None:
        self.running.remove(entry)
        entry.is_running = False
        self._release(entry)
        entry.computed = 0
        entry.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(entry)

    def _allocate(self, work: Iterable[tuple[str, int]]) -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
        """Give each planned item the blocks it needs, in order, within the step's token and sequence caps.

        A running request short of blocks preempts the most recently admitted running request not yet
        served this step (possibly itself); a waiting request short of blocks ends admission for the step.
        """
        cfg = self.config
        granted: list[tuple[str, int]] = []
        preempted: list[str] = []
        served: set[str] = set()
        budget = cfg.max_num_batched_tokens
        for rid, count in work:
            entry = self._by_id.get(rid)
            count = min(count, budget, entry.pending if entry else 0)
            skip = rid in served or rid in preempted  # a request preempted this step waits for the next
            if entry is None or count <= 0 or skip or len(granted) >= cfg.max_num_seqs:
                continue
            need = blocks_for_tokens(entry.computed + count, cfg.block_size) - entry.blocks
            if entry.is_running:
                while need > self.free_blocks:
                    victim = next((e for e in reversed(self.running) if e.id not in served), None)
                    if victim is None:
                        break
                    self._preempt(victim)
                    preempted.append(victim.id)
                    if victim is entry:
                        break
                if not entry.is_running or need > self.free_blocks:
                    continue
            else:
                if need > self.free_blocks:
                    break
                self.waiting.remove(entry)
                self.running.append(entry)
                entry.is_running = True
            entry.blocks += need
            self.free_blocks -= need
            granted.append((rid, count))
            served.add(rid)
            budget -= count
            if budget == 0:
                break
        return tuple(granted), tuple(preempted)

    def _shape(self, work: Iterable[tuple[str, int]]) -> BatchShape:
        prefills: list[PrefillChunk] = []
        decode_count = 0
        decode_context = 0
        for rid, count in work:
            entry = self._by_id[rid]
            if entry.decoding:
                decode_count += 1
                decode_context += entry.num_tokens
            else:
                prefills.append(PrefillChunk(new_tokens=count, cached_tokens=entry.computed))
        return BatchShape(tuple(prefills), decode_count, decode_context)
