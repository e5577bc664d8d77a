"""The vllm profiler backend's derivation of step times from whole requests, on a fake engine and a fake clock
(vLLM's engine itself needs a GPU: not run here)."""

from __future__ import annotations

import pytest

from ecoserve.cli.main import main
from ecoserve.worker.vllm_profile import profile_engine

PREFILL_PER_TOKEN = 1e-4
DECODE_STEP = 0.02
DECODE_PER_SEQ = 1e-3


class FakeEngine:
    """Advances a clock by a known cost: prefill by prompt tokens, then one decode step per extra token."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[tuple[int, int, int]] = []

    def clock(self) -> float:
        return self.now

    def generate(self, prompts: list[list[int]], max_tokens: int) -> None:
        self.calls.append((len(prompts), len(prompts[0]), max_tokens))
        self.now += PREFILL_PER_TOKEN * sum(map(len, prompts))
        self.now += (max_tokens - 1) * (DECODE_STEP + DECODE_PER_SEQ * len(prompts))


def test_step_times_are_derived_from_whole_requests():
    engine = FakeEngine()
    rows = profile_engine(
        engine.generate, [100, 1000], [1, 8], 512, 32000, repeats=3, decode_steps=8, clock=engine.clock
    )
    assert [(r.kind, r.tokens, r.context) for r in rows] == [
        ("prefill", 100, 100),
        ("prefill", 1000, 1000),
        ("decode", 1, 516),
        ("decode", 8, 516),
    ]
    assert rows[0].seconds == pytest.approx(100 * PREFILL_PER_TOKEN)
    assert rows[1].seconds == pytest.approx(1000 * PREFILL_PER_TOKEN)
    # The prefill of the decode batch cancels out: only the per-step cost is left.
    assert rows[2].seconds == pytest.approx(DECODE_STEP + DECODE_PER_SEQ)
    assert rows[3].seconds == pytest.approx(DECODE_STEP + 8 * DECODE_PER_SEQ)
    # One warm-up plus `repeats` timed runs per measurement; decode batches carry `context` tokens each.
    assert engine.calls.count((8, 512, 9)) == 4 and engine.calls.count((1, 100, 1)) == 4


def test_prompts_are_distinct_and_within_the_vocabulary():
    seen: list[list[list[int]]] = []
    profile_engine(lambda p, _: seen.append(p), [], [4], 64, vocab_size=50, repeats=1, decode_steps=1)
    batch = seen[0]
    assert len({tuple(p) for p in batch}) == 4 and all(0 <= t < 50 for p in batch for t in p)


def test_vllm_backend_needs_a_model(capsys):
    assert main(["profile", "measure", "--backend", "vllm"]) == 2
    assert "--backend vllm needs --model" in capsys.readouterr().err
