"""What a step-time model is: the one question every scheduler asks of hardware.

A step is one forward pass of an engine over a batch. Prefill chunks (new prompt tokens on top of tokens
already in the KV cache) and decodes (one new token each over their context) may share a step in the
baselines that mix them; EcoServe's own steps hold only one kind. Implementations: the analytical
`CostModel` (brain.costmodel) and a measured prefill table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PrefillChunk:
    """`new_tokens` prompt tokens computed in this step, attending to `cached_tokens` already in KV."""

    new_tokens: int
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class BatchShape:
    """One engine step's work: prefill chunks plus `decode_count` decodes over `decode_context` tokens."""

    prefills: tuple[PrefillChunk, ...] = ()
    decode_count: int = 0
    decode_context: int = 0

    @property
    def num_tokens(self) -> int:
        """Tokens pushed through the linear layers this step."""
        return sum(c.new_tokens for c in self.prefills) + self.decode_count


class StepTimeModel(Protocol):
    """Seconds one engine step takes for a batch; must be monotone (more work never takes less time)."""

    def step_time(self, batch: BatchShape) -> float: ...


def prefill_time(model: StepTimeModel, prompt_lens: Sequence[int]) -> float:
    """Time of one prefill-only step over whole prompts."""
    if not prompt_lens:
        return 0.0
    return model.step_time(BatchShape(prefills=tuple(PrefillChunk(n) for n in prompt_lens)))


def decode_time(model: StepTimeModel, batch_size: int, total_context: int) -> float:
    """Time of one decode-only step for `batch_size` requests holding `total_context` tokens in KV."""
    if batch_size <= 0:
        return 0.0
    return model.step_time(BatchShape(decode_count=batch_size, decode_context=total_context))


class MemoizedStepTime:
    """A step-time model with a bounded cache: routing checks and simulated engines price the same shapes
    again and again (a lone prompt of a given length, a decode batch that did not change)."""

    def __init__(self, model: StepTimeModel, maxsize: int = 1 << 16) -> None:
        self.model = model
        self.step_time = lru_cache(maxsize=maxsize)(model.step_time)
