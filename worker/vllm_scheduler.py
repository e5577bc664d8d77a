"""Temporal disaggregation inside vLLM's V1 engine: every step is prefill-only or decode-only.

vLLM's scheduler fills each step with decodes and then prefill chunks. These subclasses decide the phase of
the next step first (the brain's instance phase policy) and let vLLM's own `schedule()` fill it with only
that kind of work, by hiding the other kind for the duration of the call:

- prefill step: the running requests that are decoding are taken out of `running` (they keep their KV
  blocks and wait), so only prompts — new, chunked, or recomputed after preemption — are scheduled;
- decode step: the waiting queue is swapped for an empty one, so no new prompt is admitted.

Everything else (KV allocation, preemption, prefix caching, chunking, async scheduling) is vLLM's. Use
`TemporalAsyncScheduler` with async scheduling (vLLM's default) and `TemporalScheduler` without it. Behind a
router the phase rule is prefill priority; standalone (`ECOSERVE_PHASE_MODE=tdpipe`) TD-Pipe's rules decide
when waiting prompts are admitted.
"""

from __future__ import annotations

import os
from collections import Counter

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.request_queue import create_request_queue
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request as VllmRequest

from ecoserve.brain.costmodel import CostModel
from ecoserve.brain.hardware import ModelShape, gpu_preset
from ecoserve.brain.phase import PhaseMode, PhasePolicySettings, next_phase
from ecoserve.brain.predictor import QuantilePredictor
from ecoserve.brain.state import Phase, Request
from ecoserve.brain.steptime import StepTimeModel

from .vllm_phase import GPU_ENV, PHASE_MODE_ENV, PhaseGauge


def needs_prefill(request: VllmRequest) -> bool:
    """More than one token (plus draft tokens) to compute before the next sample: a prompt, a prompt chunk, or
    a recompute after preemption."""
    pending = request.num_tokens_with_spec + request.num_output_placeholders - request.num_computed_tokens
    return request.num_computed_tokens < request.num_prompt_tokens or pending > 1 + len(request.spec_token_ids)


def _brain_view(request: VllmRequest, predicted: int) -> Request:
    r = Request(request.request_id, request.num_prompt_tokens, 0.0, predicted_output=predicted)
    r.generated = request.num_output_tokens
    return r


class TemporalMixin:
    """The phase decision around vLLM's `schedule()`; mixed into vLLM's Scheduler or AsyncScheduler."""

    running: list[VllmRequest]
    waiting: object

    def _init_temporal(self) -> None:
        mode = PhaseMode(os.environ.get(PHASE_MODE_ENV, PhaseMode.PREFILL_PRIORITY.value))
        parallel = self.vllm_config.parallel_config  # type: ignore[attr-defined]
        self.phase_settings = PhasePolicySettings(mode=mode, pipeline_stages=parallel.pipeline_parallel_size)
        self.phase = Phase.IDLE
        self.phase_steps: Counter[Phase] = Counter()
        self.phase_gauge = PhaseGauge()
        self.predictor = QuantilePredictor()
        self._stalled = False
        # TD-Pipe compares step times: price them for the served model on the GPU named in ECOSERVE_GPU.
        shape = ModelShape.from_hf_config(self.vllm_config.model_config.hf_config.to_dict())  # type: ignore[attr-defined]
        gpu = gpu_preset(os.environ.get(GPU_ENV, "h100"))
        tp, pp = parallel.tensor_parallel_size, parallel.pipeline_parallel_size
        self.step_model: StepTimeModel = CostModel(shape, gpu, tp=tp, pp=pp)

    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        prefills = [r for r in self.running if needs_prefill(r)]
        decodes = [r for r in self.running if not needs_prefill(r)]
        waiting = [*self.waiting, *self.kv_holding_waiting]  # type: ignore[attr-defined]
        phase = self._next_phase(prefills, decodes, waiting)
        if phase is Phase.PREFILL:
            self.running = prefills
            try:
                output = super().schedule(throttle_prefills)  # type: ignore[misc]
            finally:
                # Decodes first: they were admitted earlier, so vLLM preempts them last.
                self.running = decodes + self.running
        else:
            held = self.waiting
            self.waiting = create_request_queue(self.policy)  # type: ignore[attr-defined]
            try:
                output = super().schedule(throttle_prefills)  # type: ignore[misc]
            finally:
                for request in reversed(list(self.waiting)):  # type: ignore[call-overload]
                    held.prepend_request(request)  # preempted during this step: first in line again
                self.waiting = held
        self.phase = phase if output.num_scheduled_tokens else Phase.IDLE
        # A prefill step vLLM could not fill (no KV for the next prompt): decode next, so decodes finish and
        # free blocks, instead of asking again forever.
        self._stalled = phase is Phase.PREFILL and not output.num_scheduled_tokens and bool(decodes)
        self.phase_steps[self.phase] += 1
        self.phase_gauge.set(self.phase)
        return output

    def _next_phase(self, prefills: list[VllmRequest], decodes: list[VllmRequest], waiting: list) -> Phase:
        """The brain's phase policy over vLLM's queues (prompts, chunked or recomputing ones included, count as
        waiting); a decode step whenever there is nothing to prefill or the last prefill attempt stalled."""
        if (not prefills and not waiting) or self._stalled:
            return Phase.DECODE
        cfg = self.cache_config  # type: ignore[attr-defined]
        predict = self.predictor.predict
        decision = next_phase(
            self.phase,
            [_brain_view(r, predict(r.num_prompt_tokens, r.max_tokens)) for r in prefills + waiting],
            [_brain_view(r, predict(r.num_prompt_tokens, r.max_tokens)) for r in decodes],
            cfg.num_gpu_blocks,
            cfg.block_size,
            self.step_model,
            self.phase_settings,
        )
        return Phase.PREFILL if decision.phase is Phase.PREFILL or not decodes else Phase.DECODE


class TemporalScheduler(TemporalMixin, Scheduler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_temporal()


class TemporalAsyncScheduler(TemporalMixin, AsyncScheduler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_temporal()
