"""The engine model under temporal disaggregation: steps, chunking, preemption, abort (virtual clock)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import LinearStepModel
from ecoserve.brain.engine import EngineConfig, EngineModel, Step
from ecoserve.brain.phase import PhaseMode, PhasePolicySettings
from ecoserve.brain.state import Phase, Request
from ecoserve.brain.temporal import TemporalPolicy

MODEL = LinearStepModel(fixed=0.01, per_token=0.001)


def engine(blocks: int = 1000, mode: PhaseMode = PhaseMode.PREFILL_PRIORITY, **kw) -> EngineModel:
    return EngineModel(EngineConfig(kv_blocks=blocks, **kw), MODEL, TemporalPolicy(PhasePolicySettings(mode=mode)))


def req(rid: str, prompt: int, out: int, arrival: float = 0.0, predicted: int | None = None) -> Request:
    return Request(rid, prompt, arrival, max_tokens=out, predicted_output=out if predicted is None else predicted)


def drive(e: EngineModel, arrivals: list[Request], limit: int = 100_000) -> list[Step]:
    """Run the engine on a virtual clock until every request finished; return the steps taken."""
    pending = sorted(arrivals, key=lambda r: r.arrival)
    now, steps = 0.0, []
    for _ in range(limit):
        while pending and pending[0].arrival <= now:
            e.add(pending.pop(0))
        step = e.plan_step(now)
        if step is None:
            if not pending:
                return steps
            now = pending[0].arrival
            continue
        steps.append(step)
        now += step.duration
        e.finish_step(step, now)
    raise AssertionError("engine did not finish")


def test_lone_request_prefills_then_decodes_each_token():
    e = engine()
    r = req("r", prompt=100, out=5)
    steps = drive(e, [r])
    assert [s.phase for s in steps] == [Phase.PREFILL] + [Phase.DECODE] * 4
    assert steps[0].duration == pytest.approx(0.11)  # TTFT = the prefill time
    assert r.ttft() == pytest.approx(0.11)
    assert r.generated == 5 and r.finished
    assert e.free_blocks == 1000 and len(e) == 0


def test_long_prompt_is_chunked_over_prefill_only_steps():
    e = engine(max_num_batched_tokens=4096)
    r = req("r", prompt=10_000, out=2)
    steps = drive(e, [r])
    assert [s.phase for s in steps] == [Phase.PREFILL] * 3 + [Phase.DECODE]
    assert [s.batch.prefills[0].new_tokens for s in steps[:3]] == [4096, 4096, 1808]
    assert [s.batch.prefills[0].cached_tokens for s in steps[:3]] == [0, 4096, 8192]
    assert r.first_token_time == pytest.approx(sum(s.duration for s in steps[:3]))


def test_new_request_interrupts_decoding_with_a_prefill_step():
    e = engine()
    a = req("a", prompt=50, out=10)
    b = req("b", prompt=50, out=3, arrival=0.1)
    steps = drive(e, [a, b])
    phases = [s.phase for s in steps]
    k = next(i for i, s in enumerate(steps) if any(rid == "b" for rid, _ in s.work))
    assert phases[k] is Phase.PREFILL and steps[k].work == (("b", 50),)
    assert phases[k - 1] is Phase.DECODE and phases[k + 1] is Phase.DECODE


def test_kv_pressure_preempts_and_recomputes_and_everyone_finishes():
    e = engine(blocks=12)  # 192 tokens
    a, b = req("a", prompt=64, out=100), req("b", prompt=64, out=100)
    steps = drive(e, [a, b])
    assert any(s.preempted for s in steps)
    assert e.preemptions >= 1
    assert a.generated == b.generated == 100
    assert e.free_blocks == 12


def test_abort_frees_blocks_and_stops_tokens():
    e = engine()
    e.add(req("a", prompt=100, out=50))
    step = e.plan_step(0.0)
    assert e.abort("a") and not e.abort("a")
    result = e.finish_step(step, step.duration)
    assert result.tokens == () and e.free_blocks == 1000


def test_requests_larger_than_the_kv_cache_are_refused():
    with pytest.raises(ValueError, match="KV cache"):
        engine(blocks=10).add(req("a", prompt=100, out=100))
    e = engine()
    e.add(req("a", prompt=1, out=1))
    with pytest.raises(ValueError, match="already"):
        e.add(req("a", prompt=1, out=1))


requests = st.lists(
    st.tuples(st.integers(1, 700), st.integers(1, 60), st.integers(0, 3000), st.integers(1, 200)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=120, deadline=None)
@given(
    specs=requests,
    blocks=st.integers(50, 300),
    budget=st.sampled_from([64, 512, 8192]),
    mode=st.sampled_from(list(PhaseMode)),
)
def test_no_step_mixes_prefill_and_decode_and_all_requests_finish(specs, blocks, budget, mode):
    e = engine(blocks=blocks, mode=mode, max_num_batched_tokens=budget, max_num_seqs=16)
    reqs = [req(f"r{k}", p, o, arrival=t / 1000, predicted=pr) for k, (p, o, t, pr) in enumerate(specs)]
    reqs = [r for r in reqs if r.prompt_len + r.max_tokens <= blocks * 16]
    for step in drive(e, reqs):
        assert not (step.batch.prefills and step.batch.decode_count), step
        assert step.phase is (Phase.PREFILL if step.batch.prefills else Phase.DECODE)
        assert step.batch.num_tokens <= budget and len(step.work) <= 16
        assert 0 <= e.free_blocks <= blocks
    assert all(r.generated == r.max_tokens and r.finished for r in reqs)
    assert e.free_blocks == blocks and not e.running and not e.waiting
