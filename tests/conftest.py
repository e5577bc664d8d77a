"""Shared test fixtures: a hand-computable step-time model and request/instance builders."""

from __future__ import annotations

from dataclasses import dataclass

from ecoserve.brain.state import InstanceState, Request
from ecoserve.brain.steptime import BatchShape


@dataclass(frozen=True)
class LinearStepModel:
    """step = fixed + per_token·tokens + per_context·(decode context): easy to compute by hand."""

    fixed: float = 0.01
    per_token: float = 0.001
    per_context: float = 0.0

    def step_time(self, batch: BatchShape) -> float:
        return self.fixed + self.per_token * batch.num_tokens + self.per_context * batch.decode_context


def make_request(
    rid: str, prompt: int = 100, arrival: float = 0.0, predicted: int = 100, generated: int = 0, first=None
) -> Request:
    r = Request(id=rid, prompt_len=prompt, arrival=arrival, predicted_output=predicted)
    if first is not None:
        r.first_token_time = first
        r.last_token_time = first
        r.generated = max(generated, 1)
    return r


def make_instance(iid: str, blocks: int = 1000, requests: list[Request] = ()) -> InstanceState:
    inst = InstanceState(id=iid, kv_blocks_total=blocks)
    for r in requests:
        inst.admit(r)
    return inst
